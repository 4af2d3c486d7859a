"""Disk space the agent keeps for itself beside the outbox, and gives back when the disk is full.

SQLite cannot open a WAL database on a full disk (it must size its ``-shm``
file): an agent started on a card that logs or another program filled, after
a reboot, would not run at all, and every press until someone freed space
would be lost.  So while there is room the outbox keeps a 1 MiB file,
``<outbox>.reserve``, written full (a sparse file would free nothing), and
deletes it when an open fails for want of space; it is written again at a
later start once there is room beside the outbox's own headroom.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

BALLAST_BYTES = 1024 * 1024


def ballast_path(outbox: Path) -> Path:
    return outbox.with_name(outbox.name + ".reserve")


def keep(outbox: Path, headroom: int) -> None:
    """Write the reserve if it is missing and the disk has room for it beyond ``headroom``; never raises."""
    path = ballast_path(outbox)
    try:
        if path.exists() and path.stat().st_size == BALLAST_BYTES:
            return
        path.unlink(missing_ok=True)  # cut short by a crash while it was written: written again, whole
        if shutil.disk_usage(path.parent).free < headroom + 2 * BALLAST_BYTES:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        zeros = memoryview(bytes(BALLAST_BYTES))
        while zeros:
            zeros = zeros[os.write(fd, zeros) :]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
    finally:
        os.close(fd)


def release(outbox: Path) -> bool:
    """Delete the reserve to make room; True if there was one."""
    path = ballast_path(outbox)
    try:
        path.unlink()
    except OSError:
        return False
    log.critical(
        "the disk holding outbox %s is full; deleted the agent's %d KiB reserve (%s) to keep recording; "
        "free space on it (old logs, photos)",
        outbox,
        BALLAST_BYTES // 1024,
        path,
    )
    return True
