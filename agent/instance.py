"""One agent per outbox: a lock file beside it, held for the life of the process.

Two agents on one outbox would both send its rows under one client id, knock
each other off the broker about once a second, and write the same state
files.  The control socket used to be the only guard, and it is bound last,
after the outbox, the state file and the broker have been touched; the agent
it turned away then deleted the running agent's socket on its way out.  So
the daemon takes this lock before it opens anything.  ``flock`` is released by
the kernel when the process ends, however it ends: a crash never leaves a
stale lock for the next start to trip over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from agent.errors import ControlError


class InstanceLock:
    """An exclusive ``flock`` on ``<outbox>.lock``, which holds the owner's pid for the message a second agent gets."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = Path(outbox)
        self.path = self.outbox.with_name(self.outbox.name + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or say who has it.

        Raises:
            ControlError: another process holds it, or the file cannot be opened.

        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ControlError(f"cannot open the agent's lock file {self.path}: {exc}; check outbox.path") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_pid(fd)
            os.close(fd)
            who = f" (pid {owner})" if owner else ""
            raise ControlError(
                f"another agent is already running on outbox {self.outbox}{who}; "
                "stop it first (systemctl stop campus-agent), or give this one its own outbox.path"
            ) from None
        with contextlib.suppress(OSError):  # the pid only serves the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the next agent start; the file stays (removing it would race a starting agent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
