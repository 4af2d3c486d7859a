"""The agent's small state file beside the outbox: boot id, seq high-water mark, test mode, what status must not forget.

Kept outside SQLite on purpose.  When the outbox is deleted, replaced or
unreadable, this file is what keeps ``seq`` from going backwards: a file whose
own counter is below the mark resumes :data:`SEQ_MARGIN` above it, because
events recorded after the last save (at most one heartbeat tick) may have used
a few seqs.  The mark includes seqs reserved for events held in memory.
Test mode's end is kept too, on both clocks, so a restart in the middle of
a technician's test does not send the next test press as a real alarm: the
monotonic end serves a restart within the same boot, the wall-clock end one
after a reboot, and only while the clock is synchronised (agent/daemon.py).

Written atomically and safely in a directory others may write to: a fresh
temporary file from :func:`tempfile.mkstemp` (``O_CREAT|O_EXCL``, never a
fixed name, so a planted symlink is never followed), fsynced, then renamed
over the old file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEQ_MARGIN = 1000
MAX_MARK = 2**62  # far above any real seq, and mark + margin still fits SQLite's signed 64-bit INTEGER


@dataclass(frozen=True)
class State:
    boot_id: str | None
    last_seq: int
    test_until: float | None = None  # test mode's end, wall-clock seconds; None when it is off
    test_until_mono: float | None = None  # the same on the monotonic clock, which only this boot shares
    alarms: tuple[str, ...] = ()  # ids of the latest alarms: the centre may still acknowledge them
    inputs: tuple[tuple[str, str | None, str | None], ...] = ()  # (name, last_event, last_test)
    alarm_seqs: tuple[tuple[str, int], ...] = ()  # (id, seq) of those alarms: a pending one is found in the outbox


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
            return State(
                boot if isinstance(boot, str) else None,
                _mark(seq, self.path),
                _seconds(doc.get("test_until")),
                _seconds(doc.get("test_until_mono")),
                _ids(doc.get("alarms")),
                _inputs(doc.get("inputs")),
                _id_seqs(doc.get("alarm_seqs")),
            )
        except (OSError, ValueError, AttributeError):
            return State(None, 0)

    def save(self, state: State) -> None:
        """Write ``state`` if it changed: a new temporary file, fsync, rename over the old one.

        The mark never goes down: a caller that read an older top cannot undo a newer one.
        """
        if self._saved is not None and state.last_seq < self._saved.last_seq:
            state = dataclasses.replace(state, last_seq=self._saved.last_seq)
        if state == self._saved:
            return
        doc = {
            "boot_id": state.boot_id,
            "last_seq": state.last_seq,
            "test_until": state.test_until,
            "test_until_mono": state.test_until_mono,
            "alarms": list(state.alarms),
            "inputs": {name: {"last_event": ev, "last_test": test} for name, ev, test in state.inputs},
            "alarm_seqs": dict(state.alarm_seqs),
        }
        data = json.dumps(doc).encode()
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


def sync_dir(folder: Path) -> None:
    """Sync a folder: a file created or renamed in it survives a power cut only after this."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mark(seq: object, path: Path) -> int:
    """The saved seq mark; a damaged one reads as none (the outbox's own counters still hold)."""
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_MARK:
        return seq
    log.warning("%s: last_seq %.40r is not a seq mark (0 to 2^62); ignored", path, seq)
    return 0


_MAX_IDS = 32


def _ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value[:_MAX_IDS] if isinstance(v, str) and len(v) <= 64)


def _id_seqs(value: object) -> tuple[tuple[str, int], ...]:
    """The alarms' seqs; missing in a file an older agent wrote (its pending test presses then read as delivered)."""
    if not isinstance(value, dict):
        return ()
    return tuple(
        (k, v)
        for k, v in list(value.items())[:_MAX_IDS]
        if isinstance(k, str) and len(k) <= 64 and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_MARK
    )


_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def _text(value: object) -> str | None:
    """A time the status shows as it is: only one in the contract's form (a hand-edited file may hold anything)."""
    return value if isinstance(value, str) and _TS.fullmatch(value) else None


def _inputs(value: object) -> tuple[tuple[str, str | None, str | None], ...]:
    if not isinstance(value, dict):
        return ()
    return tuple(
        (name, _text(v.get("last_event")), _text(v.get("last_test")))
        for name, v in list(value.items())[:_MAX_IDS]
        if isinstance(name, str) and isinstance(v, dict)
    )


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


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
        sync_dir(path.parent)  # the rename itself survives a power cut only once its folder is synced
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
