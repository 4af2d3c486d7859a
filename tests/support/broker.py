"""Run a throwaway mosquitto 2.0 broker as a child process (loopback only)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.support.waiting import eventually

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    """Return once something accepts on 127.0.0.1:``port``; fail at once if ``proc`` (the server) exits."""

    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with rc={proc.returncode}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True

    eventually(listening, timeout, f"a listener on 127.0.0.1:{port}", interval=0.05, retry_on=(OSError,))


class Broker:
    """mosquitto -c <dir>/mosquitto.conf with one listener on 127.0.0.1:<port>.

    ``listener_extra`` follows the listener line (auth, TLS, ACL).  Start, stop
    and restart keep the same port.  ``max_queued_messages`` is raised because
    mosquitto's default of 1000 silently drops QoS 1 messages for a subscriber
    that falls behind, which would look like loss by the agent.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        listener_extra: str = "allow_anonymous true\n",
        persistence: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.listener_extra = listener_extra
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None

    def write_conf(self) -> None:
        lines = [
            "per_listener_settings true",
            f"persistence {'true' if self.persistence else 'false'}",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}/")
        if os.geteuid() == 0:
            # as root mosquitto drops to user 'mosquitto', which cannot read a 0700 tmp dir
            lines.append("user root")
        lines.append(f"listener {self.port} 127.0.0.1")
        self.conf.write_text("\n".join(lines) + "\n" + self.listener_extra)

    def start(self, timeout: float = 10.0) -> Broker:
        self.write_conf()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=logf, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc, timeout)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- mosquitto.log ---\n{self.log.read_text()}") from None
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
