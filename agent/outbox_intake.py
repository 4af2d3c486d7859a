"""The outbox's intake: a small preallocated file where a new event is made durable by one write and one fdatasync.

Why it exists: committing one row to SQLite (WAL, ``synchronous=FULL``) costs
a transaction's CPU and writes four or five 4 KiB pages (the row, its indexes,
the AUTOINCREMENT counter); on the bench machine that is about 0.85 ms a
press, against 0.5 ms for one 4 KiB block and ``fdatasync``.  A press's event
goes here, is published as soon as the block is on disk, and when its PUBACK
comes it is done without SQLite ever seeing it.  An event still waiting (the
link is down, the broker is slow) moves into SQLite with the next commit
there, or at stop; until then it is sent from memory like any other row
(agent/outbox.py keeps it in its pending rows).

The file is ``SLOTS`` blocks of ``SLOT_BYTES``; one event per block:

* ``MAGIC``, a state byte (``LIVE`` or ``DONE``), seq, created_ms, alarm,
  the payload's length, a CRC-32 of those and the payload, then the payload
  (``id`` NUL ``type`` NUL ``body``, UTF-8).  A block whose CRC does not match
  was being written when the power went: its event was never published (the
  publish waits for ``fdatasync``), so it is skipped.
* Marking a block ``DONE`` (acknowledged, or moved into SQLite) is one byte
  written without a sync: if a power cut loses it, the event is sent once
  more after the restart, which the contract allows (ids de-duplicate);
  syncing would cost every ack a disk flush.
* A ``DONE`` block is reused only for a higher seq, so the highest seq ever
  written is always in the file: a restart never hands out a lower seq even
  if every event since the last SQLite commit went through here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.closing import ClosingFile
from agent.outbox_rows import OutboxRow

log = logging.getLogger(__name__)

SLOTS = 64
SLOT_BYTES = 4096
MAGIC = b"CEI1"
LIVE = 1
DONE = 2
_FIXED = struct.Struct("<qqBI")  # seq, created_ms, alarm, payload length
_HEAD = len(MAGIC) + 1 + _FIXED.size + 4  # magic, state, fixed, crc
MAX_PAYLOAD = SLOT_BYTES - _HEAD


@dataclass(frozen=True)
class Found:
    """What a read of the file found: the events not yet done, and the highest seq in any block."""

    live: list[OutboxRow]
    top: int
    damaged: int  # blocks with the magic but a bad CRC (a write cut short)


def payload_of(event_id: str, type_: str, body: str) -> bytes:
    """What a block holds of a row besides its numbers: the event's id, type and stored document."""
    return f"{event_id}\0{type_}\0{body}".encode()


def encode(row: OutboxRow, payload: bytes) -> bytes:
    fixed = _FIXED.pack(row.seq, round(row.created * 1000), int(row.alarm), len(payload))
    crc = zlib.crc32(payload, zlib.crc32(fixed))
    return b"".join((MAGIC, bytes((LIVE,)), fixed, crc.to_bytes(4, "little"), payload))


def decode(block: bytes) -> tuple[int, OutboxRow] | None:
    """(state, row) of one block, or None for an empty or damaged one."""
    if block[: len(MAGIC)] != MAGIC:
        return None
    state = block[len(MAGIC)]
    at = len(MAGIC) + 1
    fixed = block[at : at + _FIXED.size]
    seq, created_ms, alarm, length = _FIXED.unpack(fixed)
    crc = int.from_bytes(block[at + _FIXED.size : _HEAD], "little")
    payload = block[_HEAD : _HEAD + length]
    if length > MAX_PAYLOAD or zlib.crc32(payload, zlib.crc32(fixed)) != crc:
        return None
    try:
        event_id, type_, body = payload.decode().split("\0", 2)
    except ValueError:
        return None
    return state, OutboxRow(seq, event_id, type_, bool(alarm), created_ms / 1000.0, body)


class Intake(ClosingFile):
    """The slot file; not thread-safe: the outbox calls it under its own lock.

    Raises:
        OSError: the file cannot be created, sized or written; the outbox then
            records through SQLite alone.

    """

    def __init__(self, path: Path, slots: int = SLOTS) -> None:
        self.path = path
        self._slots = slots
        self._slot_of: dict[int, int] = {}  # seq -> block, for the blocks in use
        self._closed = False
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(self._fd).st_size
            if size != slots * SLOT_BYTES:
                if size > slots * SLOT_BYTES:
                    os.ftruncate(self._fd, slots * SLOT_BYTES)
                else:
                    # Written, not fallocated: a write into an unwritten extent is a metadata change, which
                    # would make every first fdatasync of a block commit the filesystem's journal.
                    os.pwrite(self._fd, bytes(slots * SLOT_BYTES - size), size)  # ENOSPC now, never at a press
                os.fsync(self._fd)
                _sync_dir(path.parent)
        except BaseException:
            os.close(self._fd)
            raise
        self._free: list[int] = []

    def read(self) -> Found:
        """Every block's event: the live ones (in seq order) stay claimed, the others become free."""
        data = os.pread(self._fd, self._slots * SLOT_BYTES, 0)
        live: list[tuple[int, OutboxRow]] = []
        top = damaged = 0
        free = []
        for i in range(self._slots):
            block = data[i * SLOT_BYTES : (i + 1) * SLOT_BYTES]
            got = decode(block)
            if got is None:
                damaged += block[: len(MAGIC)] == MAGIC
                free.append(i)
                continue
            state, row = got
            top = max(top, row.seq)
            if state == LIVE:
                live.append((i, row))
            else:
                free.append(i)
        live.sort(key=lambda t: t[1].seq)
        self._slot_of = {row.seq: i for i, row in live}
        self._free = self._order_free(free, data)
        return Found([row for _, row in live], top, damaged)

    @staticmethod
    def _order_free(free: list[int], data: bytes) -> list[int]:
        """Free blocks, the one holding the highest seq last: it is the file's memory of that seq."""

        def seq_in(i: int) -> int:
            got = decode(data[i * SLOT_BYTES : (i + 1) * SLOT_BYTES])
            return got[1].seq if got is not None else -1

        return sorted(free, key=seq_in, reverse=True)

    @property
    def free(self) -> int:
        return len(self._free)

    def write(self, rows: list[OutboxRow], payloads: list[bytes]) -> None:
        """Put each row in a free block, then one ``fdatasync``: on return they survive a power cut.

        The caller checked :attr:`free` and :data:`MAX_PAYLOAD`.  On an error
        the blocks are given back: a block written but not synced may or may
        not hold its event after a crash, which at worst sends it once more.
        """
        used: list[int] = []
        try:
            for row, payload in zip(rows, payloads, strict=True):
                i = self._free.pop()
                used.append(i)
                os.pwrite(self._fd, encode(row, payload), i * SLOT_BYTES)
            os.fdatasync(self._fd)
        except BaseException:
            self._free.extend(reversed(used))
            raise
        for row, i in zip(rows, used, strict=True):
            self._slot_of[row.seq] = i

    def done(self, seqs: Iterable[int]) -> None:
        """Mark these events' blocks done (not synced: see the module doc) and free them."""
        for seq in seqs:
            i = self._slot_of.pop(seq, None)
            if i is None:
                continue
            try:
                os.pwrite(self._fd, bytes((DONE,)), i * SLOT_BYTES + len(MAGIC))
            except OSError as exc:
                # The block stays LIVE on disk: a restart sends its event once more.
                log.warning("outbox intake %s: cannot mark seq %d done (%s); it may be sent again", self.path, seq, exc)
            self._free.insert(0, i)  # reused last: the block with the newest seq stays longest

    def holds(self, seq: int) -> bool:
        return seq in self._slot_of

    def sync(self) -> None:
        """Make the done marks durable too (at a clean stop: no event is sent twice after it)."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self._fd)

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_state(self) -> str:
        return f"in_use={len(self._slot_of)} free={len(self._free)}"


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
