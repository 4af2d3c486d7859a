"""amqtt (a pure-Python MQTT 3.1.1 broker from PyPI) as a child process on loopback.

amqtt lives in its own virtual environment (``.venv-amqtt``, made by
``make amqtt``) because its pinned dependencies need not agree with ours; the
test runs its ``amqtt`` script as a subprocess with a config written here.
``AMQTT_BIN`` overrides where that script is.  Start, stop and kill keep the
same port, so a test can take the broker away and bring it back.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Self

from tests.support.broker import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
AMQTT_VERSION = "0.12.1"  # keep in step with the Makefile's AMQTT_VERSION
AMQTT_BIN = Path(os.environ.get("AMQTT_BIN", ROOT / ".venv-amqtt" / "bin" / "amqtt"))


def unavailable() -> str | None:
    """Why the amqtt broker cannot be started here, or None when it can."""
    if not AMQTT_BIN.exists():
        return f"amqtt is not installed at {AMQTT_BIN}; run 'make amqtt' (a venv of its own, amqtt=={AMQTT_VERSION})"
    return None


class AmqttBroker:
    """``amqtt -c <dir>/amqtt.yaml``: one TCP listener on 127.0.0.1:<port>, anonymous clients allowed."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.workdir / "amqtt.yaml"
        self.log = self.workdir / "amqtt.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_conf(self) -> None:
        # No $SYS publishing (noise on '#'); event logging so the log shows connects and wills.
        self.conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n"
            "  amqtt.plugins.logging_amqtt.EventLoggerPlugin:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )

    def start(self, timeout: float = 20.0) -> Self:
        self.write_conf()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [str(AMQTT_BIN), "-c", str(self.conf)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        try:
            wait_port(self.port, self.proc, timeout)
        except (RuntimeError, AssertionError) as exc:  # wait_port: it exited, or never listened
            self.stop()
            raise RuntimeError(f"amqtt did not start: {exc}\n--- {self.log} ---\n{self.log.read_text()}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Clean stop (SIGTERM, then SIGKILL if it hangs); idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """Crash the broker (SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    close = stop

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        return f"<AmqttBroker 127.0.0.1:{self.port} {'running' if self.running else 'stopped'}>"
