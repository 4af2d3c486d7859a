"""Pieces of the fleet bench: its broker, /proc readings, memory per device, and the report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import BenchBroker, stop_process  # noqa: E402
from bench.fleet_gen import device_name, status_doc  # noqa: E402

HEARTBEAT_S = 30.0
# Fixed header (2-4 bytes), topic length (2), packet id (2), MQTT 5 property length (1).
_MQTT_OVERHEAD = 9


class FleetBroker(BenchBroker):
    """mosquitto as a centre would run it for a large fleet.

    ``max_queued_messages 0`` (no limit): the default of 1,000 queued QoS 1
    messages per client silently drops the rest of a 20,000-device retained
    delivery at subscription time.  No per-message debug log.
    """

    SETTINGS = ("max_queued_messages 0", "max_queued_bytes 0", "max_inflight_messages 100", "persistence false")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL; one child, its pipes closed."""
    stop_process(proc, timeout)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process has had, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def machine_note() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in load],
        "python": sys.version.split()[0],
        "note": (
            "loaded machine (1-minute load average above 1 at the start): figures move with the load"
            if load[0] > 1.0
            else "quiet machine (1-minute load average at most 1 at the start)"
        ),
    }


def memory_per_device(n: int) -> dict[str, float]:
    """Bytes the monitor's fleet view holds per device after ``n`` retained statuses (tracemalloc)."""
    from agent.central.fleet import FleetView  # noqa: PLC0415 (the agent package, only when measured)

    now = time.time()
    payloads = []
    for i in range(n):
        site, device = device_name(i)
        doc = status_doc(site, device, now, "b" * 32)
        payloads.append((site, device, json.dumps(doc).encode()))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fleet = FleetView()
    for site, device, payload in payloads:  # each topic a new string, as off the wire: what the view keeps counts
        fleet.feed(f"campus/{site}/{device}/status", payload, now, retained=True)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"devices": n, "bytes_per_device": round((after - before) / n)}


def load_per_device(interval_s: float = HEARTBEAT_S) -> dict[str, float]:
    """What one device costs a broker at defaults: a retained status every ``interval_s``; events are rare."""
    site, device = device_name(123)
    topic = f"campus/{site}/{device}/status"
    payload = len(json.dumps(status_doc(site, device, time.time(), "b" * 32), separators=(",", ":")))
    packet = payload + len(topic) + _MQTT_OVERHEAD
    return {
        "status_bytes": packet,
        "messages_per_s_in": round(1 / interval_s, 4),
        "bytes_per_s_in": round(packet / interval_s, 1),
        "note": "per subscriber the same again out; plus a PUBACK (4 bytes) each way, MQTT keepalive "
        "PINGs every 60 s when idle (the status resets it)",
    }


def render_markdown(doc: dict[str, Any]) -> str:
    """The README table: one row per size, each figure with its ratio to the 100-device figure."""
    out = [
        (
            f"Fleet bench {doc['when']} ({'quick' if doc['quick'] else 'full'}; median of {doc.get('repeat', 1)} "
            f"run(s) per row; {doc['machine']['cpus']} cores, "
            f"load average {doc['machine']['load_avg_1_5_15']}; {doc['machine']['note']})"
        ),
        "",
    ]
    for kind in dict.fromkeys(r["consumer"] for r in doc["results"]):
        rows = [r for r in doc["results"] if r["consumer"] == kind]
        base = rows[0]
        out += [
            f"**{kind}**",
            "",
            (
                "| devices | retained ingest (s) | per status (µs) | steady CPU (% core) | per heartbeat (µs CPU) "
                "| event lag p50 / p99 (ms) | peak RSS (MB) | missed / duplicated |"
            ),
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {r['devices']:,} | {r['ingest_s']} | {r['ingest_us_per_status']} "
                f"({_ratio(r, base, 'ingest_us_per_status')}) "
                f"| {r['steady_cpu_pct']} | {r['cpu_us_per_heartbeat']} ({_ratio(r, base, 'cpu_us_per_heartbeat')}) "
                f"| {r['lag_p50_ms']} / {r['lag_p99_ms']} ({_ratio(r, base, 'lag_p99_ms')}) "
                f"| {r['rss_mb']} ({_ratio(r, base, 'rss_mb')}) | {r['missed']} / {r['duplicated']} |"
            )
        out.append("")
    mem, load = doc["memory_per_device_bytes"], doc["load_per_device"]
    out.append(
        f"Monitor memory: {mem['bytes_per_device']} bytes per device (fleet view, {mem['devices']:,} "
        f"devices, tracemalloc). Load per device at defaults: {load['messages_per_s_in']} messages/s, "
        f"{load['bytes_per_s_in']} bytes/s in ({load['status_bytes']}-byte status every 30 s)."
    )
    return "\n".join(out) + "\n"


def _ratio(r: dict[str, Any], base: dict[str, Any], key: str) -> str:
    a, b = r.get(key), base.get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b or math.isnan(b):
        return "x ?"
    return f"x{a / b:.1f}"
