"""sd_notify(3) in pure Python: READY, STATUS, WATCHDOG, STOPPING.

Does nothing outside systemd (no ``NOTIFY_SOCKET``).  The socket address and
environment can be passed in, so tests play systemd's side with a datagram
socket of their own.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

# A full notify socket (systemd busy) blocks a send; unbounded, it would hold the main thread, and stop()
# sends STOPPING=1 first.  A line not sent in this time is dropped (and said once).
SEND_TIMEOUT_S = 2.0


class Notifier:
    """Sends state lines to systemd's notify socket, if there is one."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self._addr = _address(env.get("NOTIFY_SOCKET", ""))
        self._pid = os.getpid() if pid is None else pid
        usec = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        ok_pid = not wd_pid or (wd_pid.isdigit() and int(wd_pid) == self._pid)
        self.watchdog_interval: float | None = (
            int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0 and ok_pid else None
        )
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when not under systemd."""
        if self._addr is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(SEND_TIMEOUT_S)
                s.connect(self._addr)
                s.sendall("\n".join(lines).encode())
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd (%s); carrying on without it", exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def __repr__(self) -> str:
        return f"<Notifier {'to ' + repr(self._addr) if self._addr else 'off'} watchdog={self.watchdog_interval}>"


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock and other address families are not used by this agent
