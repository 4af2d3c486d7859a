"""The machine and the code the figures were measured on: CPU, cores, RAM, the outbox's disk, versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from bench.common import AGENT_PATH, ROOT
from tests.support.broker import MOSQUITTO


def _run_text(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip()


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.startswith(key) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def disk_info(path: Path) -> dict[str, Any]:
    """Filesystem and block device that ``path`` lives on (where the outbox is)."""
    src = _run_text(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "-T", str(path)]).split()
    out: dict[str, Any] = {
        "path": str(path),
        "source": src[0] if src else "?",
        "fstype": src[1] if len(src) > 1 else "?",
        "options": src[2] if len(src) > 2 else "",
    }
    dev = Path(out["source"]).name
    block = Path("/sys/class/block") / dev
    if block.exists():
        parent = block.resolve().parent if (block / "partition").exists() else block.resolve()
        for key, rel in (("model", "device/model"), ("rotational", "queue/rotational")):
            with contextlib.suppress(OSError):
                out[key] = (parent / rel).read_text(encoding="ascii").strip()
    usage = shutil.disk_usage(path)
    out["free_gb"] = round(usage.free / 1e9, 1)
    return out


def machine_info(workdir: Path) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, RAM, the outbox's disk, versions, load."""
    mosq = _run_text([MOSQUITTO, "-h"]).splitlines()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_mb": _mem_total_mb(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "paho_mqtt": _version("paho-mqtt"),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": mosq[0].replace("mosquitto version ", "") if mosq else "?",
        "outbox_disk": disk_info(workdir),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def agent_under_test() -> dict[str, Any]:
    """Which agent code was measured: the tree's commit and its uncommitted changes under agent/."""
    import agent  # noqa: PLC0415

    where = Path(agent.__file__).resolve().parent
    head = _run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run_text(["git", "-C", str(ROOT), "status", "--porcelain", "--", "agent"]).splitlines()
    return {
        "package": str(where),
        "version": getattr(agent, "__version__", "?"),
        "git_head": head,
        "uncommitted_in_agent": [line.strip() for line in dirty],
        "override": AGENT_PATH,
    }


def machine_line(m: dict[str, Any]) -> str:
    d = m["outbox_disk"]
    rot = {"0": "SSD/flash", "1": "rotational (as reported)"}.get(str(d.get("rotational")), "?")
    return (
        f"{m['cpu']}, {m['cores_usable']} of {m['cores']} cores, {m['ram_mb'] // 1024} GB RAM; "
        f"outbox on {d['fstype']} {d['source']} ({d.get('model') or 'unknown model'}, {rot}); "
        f"{m['os']}, kernel {m['kernel']}, Python {m['python']}, paho-mqtt {m['paho_mqtt']}, "
        f"SQLite {m['sqlite']}, mosquitto {m['mosquitto']}; load average at start {m['loadavg_start']}"
    )
