"""Config files for tests, and the agent run as a real process (``python -m agent run``)."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Protocol

import yaml

from agent.control_client import request
from agent.errors import ControlError
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


def unique_id(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


_SOCKETS = Path("/tmp") / f"cea-{os.getpid()}"  # one folder per test process, removed at session end


def short_socket_path() -> Path:
    """UNIX socket paths stop at 107 bytes; pytest's tmp_path can be longer."""
    _SOCKETS.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(dir=_SOCKETS)) / "ctl.sock"


def remove_socket_dirs() -> None:
    shutil.rmtree(_SOCKETS, ignore_errors=True)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if v is None:  # None removes a default key
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_dict(workdir: Path, port: int, *, device: str, site: str = "main", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "device": {"id": device, "site": site, "location": "test bench"},
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "keepalive_s": 5,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1,
            "connect_timeout_s": 3,
        },
        "gpio": {"pin_factory": "mock"},
        "inputs": [{"name": "panic", "kind": "panic_button", "pin": 17, "debounce_ms": 0}],
        "heartbeat": {"interval_s": 30},
        "outbox": {"path": str(workdir / "outbox.db"), "max_mb": 50},
        "control": {"socket": str(short_socket_path())},
        "log": {"level": "info"},
    }
    return _merge(base, extra)


def write_config(workdir: Path, port: int, *, device: str, name: str = "agent.yaml", **extra: Any) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text(yaml.safe_dump(config_dict(workdir, port, device=device, **extra), sort_keys=False))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m agent <args>`` as the technician would type it; never raises on a non-zero exit."""
    return run_python("-m", "agent", *args)


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """A fresh ``python <args>`` with this checkout importable; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )


class AgentFactory(Protocol):
    """The ``agent_proc`` fixture: an agent for ``device`` against the broker on ``port``, cleaned up after the test."""

    def __call__(
        self, port: int, *, device: str, start: bool = True, workdir: Path | None = None, **extra: Any
    ) -> AgentProc: ...


class AgentProc:
    """The agent as a child process, driven through its control socket."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        data = yaml.safe_load(config.read_text())
        self.socket = Path(data["control"]["socket"])
        self.log = config.with_suffix(".log")
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> AgentProc:
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(self.env or {}))
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}:\n{self.log.read_text()}")
            self.ask("status", timeout=1.0)
            return True

        eventually(
            answers,
            timeout,
            lambda: f"the agent to answer on {self.socket}:\n{self.log.read_text()}",
            interval=0.05,
            retry_on=(ControlError,),
        )
        return self

    def ask(self, cmd: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        return request(self.socket, cmd, timeout=timeout, **fields)

    def press(self, name: str = "panic") -> None:
        self.ask("simulate", input=name, action="press")

    def release(self, name: str = "panic") -> None:
        self.ask("simulate", input=name, action="release")

    def click(self, name: str = "panic") -> None:
        self.press(name)
        self.release(name)

    def status(self) -> dict[str, Any]:
        return self.ask("status")

    def recent(self) -> list[dict[str, Any]]:
        return list(self.status()["recent_events"])

    def wait_recorded(self, n: int, type_: str = "panic", timeout: float = 10.0) -> list[dict[str, Any]]:

        def recorded() -> list[dict[str, Any]] | None:
            got = [e for e in self.recent() if e["type"] == type_]
            return got if len(got) >= n else None

        return eventually(recorded, timeout, f"the agent to record {n} {type_} events")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.socket.parent, ignore_errors=True)
