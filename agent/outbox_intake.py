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
  publish waits for ``fdatasync``), so it is skipped (bit rot may have hit a
  published one: see below).
* Marking a block ``DONE`` (acknowledged, or moved into SQLite) is one byte
  written without a sync: if a power cut loses it, the event is sent once
  more after the restart, which the contract allows (ids de-duplicate);
  syncing would cost every ack a disk flush.
* The block holding the highest seq written is never reused: it is the
  file's memory of that seq, so a restart never hands out a lower one even if
  every event since the last SQLite commit went through here, and a write cut
  short by a power cut can only damage a block whose seq was never published.
  It is freed when a later write holds a higher seq.
* So a file that was ever written always has a readable block.  A file with
  none (zero-filled in place) or with a damaged block (a torn write, or the
  disk) cannot vouch for its highest seq: :attr:`Found.lost_top`, and the
  outbox counts it as a new file.  :meth:`Intake.settle` then blanks the
  damaged blocks and gives an empty file a done block of seq 0, its marker,
  so the next start does not count it again.
* A block the disk will not read (EIO, a bad sector) is read around: the
  others' events are sent, it counts as damaged for the top, and it is never
  blanked nor reused, so it is counted again at each start while it stays
  unreadable.  Only a file with no readable block is moved aside (the outbox).
* Only alarms come here (the outbox decides): a non-alarm that waits here
  could neither be evicted nor kept out of the alarms' reserve.
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
from agent.statefile import sync_dir

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
    damaged: int  # blocks with the magic but a bad CRC (a write cut short, or the disk)
    readable: int  # blocks whose CRC matches, done or live
    unreadable: int = 0  # blocks the disk would not read (EIO): whatever they hold is unknown

    @property
    def lost_top(self) -> bool:
        """Whether the file may have lost its highest seq: no block readable, or a damaged or unreadable one."""
        return self.damaged > 0 or self.unreadable > 0 or self.readable == 0


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
        self._top: tuple[int, int] | None = None  # (seq, block) of the highest seq written: never reused
        self.failed: list[int] = []  # blocks of the last write whose sync failed
        self.unreadable = 0  # blocks the last read could not read
        self._closed = False
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(self._fd).st_size
            self.grown = size < slots * SLOT_BYTES  # created, or cut short: what it held of seqs is unknown
            if size != slots * SLOT_BYTES:
                if size > slots * SLOT_BYTES:
                    os.ftruncate(self._fd, slots * SLOT_BYTES)
                else:
                    # Written, not fallocated: a write into an unwritten extent is a metadata change, which
                    # would make every first fdatasync of a block commit the filesystem's journal.
                    _pwrite_all(self._fd, bytes(slots * SLOT_BYTES - size), size)  # ENOSPC now, never at a press
                os.fsync(self._fd)
                sync_dir(path.parent)
        except BaseException:
            os.close(self._fd)
            raise
        self._free: list[int] = []
        self._damaged: list[int] = []

    def read(self) -> Found:
        """Every block's event: the live ones (in seq order) stay claimed, the others become free.

        Read one block at a time, at start only: one bad sector then costs its
        block, not the alarms in the others.  A block that cannot be read is
        neither free nor blanked (:meth:`settle`): a later read may still
        return a live alarm from it, and a write there would destroy it.

        Raises:
            OSError: no block could be read at all.

        """
        live: list[tuple[int, OutboxRow]] = []
        self._damaged = []
        free = []
        readable = 0
        unreadable = 0
        self._top = None
        error: OSError | None = None
        for i in range(self._slots):
            try:
                block = os.pread(self._fd, SLOT_BYTES, i * SLOT_BYTES).ljust(SLOT_BYTES, b"\0")
            except OSError as exc:
                unreadable += 1
                error = error or exc
                continue
            got = decode(block)
            if got is None:
                if block[: len(MAGIC)] == MAGIC:
                    self._damaged.append(i)
                free.append(i)
                continue
            readable += 1
            state, row = got
            if self._top is None or row.seq > self._top[0]:
                self._top = (row.seq, i)
            if state == LIVE:
                live.append((i, row))
            else:
                free.append(i)
        if error is not None and unreadable == self._slots:
            raise error
        self.unreadable = unreadable
        live.sort(key=lambda t: t[1].seq)
        self._slot_of = {row.seq: i for i, row in live}
        self._free = [i for i in free if self._top is None or i != self._top[1]]
        top = 0 if self._top is None else self._top[0]
        return Found([row for _, row in live], top, len(self._damaged), readable, unreadable)

    def settle(self) -> None:
        """Once the outbox has counted :attr:`Found.lost_top`: blank the damaged blocks, mark an empty file; synced.

        Left as they are, the next start would count the same loss again and
        resume seq 1,000 higher at every restart.  Blocks that could not be
        read are left alone (see :meth:`read`): while they stay unreadable each
        start counts them again, and says so (``agent_started``).
        """
        if not self._damaged and self._top is not None:
            return
        for i in self._damaged:
            _pwrite_all(self._fd, bytes(len(MAGIC) + 1), i * SLOT_BYTES)
        if self._top is None:
            i = self._free.pop()
            marker = bytearray(
                encode(OutboxRow(seq=0, id="", type="", alarm=False, created=0.0, body=""), payload_of("", "", ""))
            )
            marker[len(MAGIC)] = DONE
            _pwrite_all(self._fd, bytes(marker), i * SLOT_BYTES)
            self._top = (0, i)
        os.fdatasync(self._fd)
        self._damaged = []

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
                _pwrite_all(self._fd, encode(row, payload), i * SLOT_BYTES)
            os.fdatasync(self._fd)
        except BaseException:
            self.failed = used
            self._free.extend(reversed(used))
            raise
        for row, i in zip(rows, used, strict=True):
            self._slot_of[row.seq] = i
        last = max(zip(rows, used, strict=True), key=lambda t: t[0].seq)
        old = self._top
        if old is not None and old[0] > last[0].seq:
            return  # a seq reserved earlier, below the file's top: that block stays its memory
        self._top = (last[0].seq, last[1])
        if old is not None and old[0] not in self._slot_of:
            self._free.insert(0, old[1])  # done, and no longer the file's top

    def void_failed(self) -> None:
        """Blank the blocks of the last failed write, once their events are safe elsewhere (best effort, unsynced).

        A failed ``fdatasync`` does not undo the ``pwrite``: the block may still
        reach the disk, and its event, committed to SQLite meanwhile, would come
        back at every start.  Only the caller knows when that is safe: while
        the events are held in memory, the block is their only copy on disk.
        """
        blocks, self.failed = self.failed, []
        for i in blocks:
            with contextlib.suppress(OSError):
                _pwrite_all(self._fd, bytes(len(MAGIC) + 1), i * SLOT_BYTES)

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
            if self._top is None or i != self._top[1]:
                self._free.insert(0, i)  # reused last; the top's block stays until a higher seq is written

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


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` until every byte is written: a short write to a regular file is rare, not impossible."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"pwrite wrote {n} bytes")
        view, offset = view[n:], offset + n
