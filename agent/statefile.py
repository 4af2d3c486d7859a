"""The agent's small state file beside the outbox: the last boot id and the seq high-water mark.

Kept outside SQLite on purpose.  When the outbox is deleted, replaced or
unreadable, this file is what keeps ``seq`` from going backwards: a file whose
own counter is below the mark resumes :data:`SEQ_MARGIN` above it, because
events recorded after the last save (at most one heartbeat tick) may have used
a few seqs.  The mark includes seqs reserved for events held in memory.

Written atomically and safely in a directory others may write to: a fresh
temporary file from :func:`tempfile.mkstemp` (``O_CREAT|O_EXCL``, never a
fixed name, so a planted symlink is never followed), fsynced, then renamed
over the old file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEQ_MARGIN = 1000


@dataclass(frozen=True)
class State:
    boot_id: str | None
    last_seq: int


class StateFile:
    """Reads and atomically rewrites ``agent-state.json``; a missing or damaged file reads as empty."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: State | None = None
        self._warned = False

    def load(self) -> State:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            boot = doc.get("boot_id")
            seq = doc.get("last_seq", 0)
            return State(boot if isinstance(boot, str) else None, seq if isinstance(seq, int) else 0)
        except (OSError, ValueError, AttributeError):
            return State(None, 0)

    def save(self, state: State) -> None:
        """Write ``state`` if it changed: a new temporary file, fsync, rename over the old one."""
        if state == self._saved:
            return
        data = json.dumps({"boot_id": state.boot_id, "last_seq": state.last_seq}).encode()
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            if not self._warned:
                log.warning(
                    "cannot write %s (%s); start reasons may read 'boot' after restarts, and seq could "
                    "restart lower if the outbox is ever deleted or damaged",
                    self.path,
                    exc,
                )
                self._warned = True
            return
        self._saved = state


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a fresh temporary file beside it, fsync, rename; raises OSError."""
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
