"""Writing one alarm photo under ``DIR/{site}/{device}/``: atomically, never through a symlink, never outside DIR.

The names come from a device, so nothing here trusts them twice: the caller
has checked site, device (contract ids) and event id (32 hex digits) already,
and every step below works relative to an open directory descriptor with
``O_NOFOLLOW``, so a symlink planted anywhere under DIR (a site, a device
directory, the photo's own name) is refused, never followed.  DIR itself is
the operator's choice and may be a symlink.

Names (docs/contract.md): ``{event_id}.jpg`` for part 1, ``{event_id}-{n}.jpg``
for part *n* > 1.  Without a part (MQTT 3.1.1 carries no user properties) the
first free name in that order is taken, and a photo whose bytes equal one
already saved for the event is a duplicate (delivery is at least once).

The file appears whole or not at all: the bytes go to a hidden temporary file
in the same directory, are flushed to disk, and the file is renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

MAX_PARTS = 64
_FILE_MODE = 0o640
_DIR_MODE = 0o750
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Saved:
    """Where a photo went (``name`` relative to its device directory); ``duplicate`` when it was there already."""

    name: str
    duplicate: bool


def open_root(path: str) -> int:
    """Create ``path`` if needed and open it as a directory; the descriptor every later write starts from.

    Raises:
        OSError: it cannot be created or is not a directory.

    """
    Path(path).mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "not writable by this user", path)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def file_name(event_id: str, part: int) -> str:
    return f"{event_id}.jpg" if part == 1 else f"{event_id}-{part}.jpg"


def write_photo(
    root_fd: int, site: str, device: str, event_id: str, *, part: int | None, payload: bytes
) -> Saved | str:
    """Save ``payload``; the :class:`Saved` name, or why it was not saved (a sentence without the path)."""
    try:
        site_fd = _subdir(root_fd, site)
    except OSError as exc:
        return _why(exc, site)
    try:
        dev_fd = _subdir(site_fd, device)
    except OSError as exc:
        return _why(exc, f"{site}/{device}")
    finally:
        os.close(site_fd)
    try:
        return _write(dev_fd, event_id, part, payload)
    except OSError as exc:
        return _why(exc, f"{site}/{device}")
    finally:
        os.close(dev_fd)


def _write(dev_fd: int, event_id: str, part: int | None, payload: bytes) -> Saved | str:
    names = (
        [file_name(event_id, part)] if part is not None else [file_name(event_id, n) for n in range(1, MAX_PARTS + 1)]
    )
    target = None
    for name in names:
        kind = _kind(dev_fd, name)
        if kind is None:
            target = name
            break
        if kind != "file":
            return f"{name} is a {kind}, not a file; not replaced (remove it)"
        if _same(dev_fd, name, payload):
            return Saved(name, duplicate=True)
        if part is not None:
            target = name  # a newer photo for the same part: it replaces the old one
            break
    if target is None:
        return f"{MAX_PARTS} different photos for event {event_id} already; not saved"
    tmp = f".{target}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE, dir_fd=dev_fd)
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, target, src_dir_fd=dev_fd, dst_dir_fd=dev_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dev_fd)
        raise
    with contextlib.suppress(OSError):  # the new name itself survives a power cut
        os.fsync(dev_fd)
    return Saved(target, duplicate=False)


def _subdir(parent_fd: int, name: str) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, _DIR_MODE, dir_fd=parent_fd)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)


def _kind(dir_fd: int, name: str) -> str | None:
    """``None`` when ``name`` is free, ``file`` for a regular file, else what is in the way."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return "file"
    return "symlink" if stat.S_ISLNK(mode) else "directory" if stat.S_ISDIR(mode) else "special file"


def _same(dir_fd: int, name: str, payload: bytes) -> bool:
    """True when the regular file ``name`` holds exactly ``payload``; read in chunks, never followed."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(payload):
            return False
        view = memoryview(payload)
        pos = 0
        while chunk := f.read(_CHUNK):
            if view[pos : pos + len(chunk)] != chunk:
                return False
            pos += len(chunk)
        return pos == len(payload)


def _why(exc: OSError, where: str) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{where} is a symlink or not a directory under the photo directory; not followed (remove it)"
    return f"cannot write under {where}: {exc.strerror or exc}"
