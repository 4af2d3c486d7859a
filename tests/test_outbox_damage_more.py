"""The outbox on a disk full to the last byte, and an intake damaged or unreadable where it lies.

A full disk must leave the status's counts true: a delete whose COMMIT fails
evicted nothing.  A damaged intake must not lower the seq below one the centre
has acknowledged (docs/architecture.md, the intake).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from agent.errors import OutboxError, OutboxFullError
from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.outbox_intake import SLOT_BYTES, decode
from tests.support.clocks import synced_clock
from tests.support.outboxfile import abandon, intake_path
from tests.support.tmpfs import small_tmpfs

CLOCK = synced_clock()


def ev(kind: EventType = EventType.PANIC, pad: int = 0) -> Event:
    return Event.create(CLOCK, kind, "x", data={"pin": 17, "pad": "p" * pad})


def _fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem to the last byte, as another program would; return the filler."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            for _ in range(100_000):
                try:
                    if os.write(fd, b"\1" * size) <= 0:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def _stored_dropped(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as c:
        row = c.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
    return int(row[0]) if row else 0


def test_full_disk__failed_evictions_leave_pending_and_dropped_true(tmp_path: Path) -> None:
    """An eviction whose COMMIT fails (SQLITE_FULL) rolls back: nothing was dropped, every row is pending."""
    with small_tmpfs(tmp_path, 8) as fs:
        db = fs / "outbox.db"
        ob = Outbox(db, site="s", device="d", headroom_bytes=64 * 1024, intake=False)
        try:
            stored = [ob.put(ev(EventType.INPUT_FAULT, pad=600)) for _ in range(40)]
            filler = _fill(fs)
            errors: list[OutboxError] = []
            for i in range(60):
                try:
                    stored.append(ob.put(ev(EventType.PANIC if i % 4 == 0 else EventType.INPUT_FAULT, pad=600)))
                except OutboxError as exc:
                    errors.append(exc)
            st = ob.stats()
            real = ob._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            assert errors, "the disk full to the byte failed no put: the test did not fill it"
            assert all(isinstance(e, OutboxFullError) and "free disk space" in str(e) for e in errors)
            assert not any("all alarms" in str(e) for e in errors), "non-alarm rows are there: say why they stay"
            assert st.pending == real
            assert st.dropped == len(stored) - real == _stored_dropped(db)
            filler.unlink()
            ob.put(ev())  # room again: the transaction is not left open
            assert ob.stats().pending == real + 1
        finally:
            ob.close()


def _acked_presses(db: Path) -> tuple[int, int]:
    """A camera fault in SQLite (the mark), then two presses through the intake, acknowledged; a crash.

    Returns (the mark, the last press's seq): that seq is in no file but the intake.
    """
    ob = Outbox(db, site="s", device="d")
    ob.put_row(ev(EventType.CAMERA_FAULT))
    mark = ob.top_seq()
    presses = [ob.put_row(ev()) for _ in range(2)]
    ob.ack([r.seq for r in presses])
    abandon(ob)
    return mark, presses[-1].seq


def _next_seq(db: Path, mark: int) -> int:
    with Outbox(db, site="s", device="d", seq_mark=mark) as again:
        return again.put_row(ev(EventType.CAMERA_FAULT)).seq


def test_damaged__a_garbled_top_block_does_not_hand_out_acknowledged_seqs_again(tmp_path: Path) -> None:
    """Bit rot in the block holding the top seq: its CRC fails and the file's top falls back."""
    db = tmp_path / "outbox.db"
    mark, top = _acked_presses(db)
    path = intake_path(db)
    data = bytearray(path.read_bytes())
    at = next(
        at
        for at in range(0, len(data), SLOT_BYTES)
        if (got := decode(bytes(data[at : at + SLOT_BYTES]))) and got[1].seq == top
    )
    data[at + 60] ^= 0xFF  # one byte of its payload
    path.write_bytes(bytes(data))
    first = _next_seq(db, mark)
    assert first > top
    assert _next_seq(db, first) == first + 1, "the damaged block was counted once, not at every start"


def test_damaged__a_zero_filled_intake_does_not_hand_out_acknowledged_seqs_again(tmp_path: Path) -> None:
    """Same size, no block readable: like a lost file; also what an intake from before the marker looks like."""
    db = tmp_path / "outbox.db"
    mark, top = _acked_presses(db)
    path = intake_path(db)
    path.write_bytes(bytes(path.stat().st_size))
    first = _next_seq(db, mark)
    assert first > top
    assert _next_seq(db, first) == first + 1, "counted once, not at every start"


def test_damaged__a_healthy_intake_never_jumps_at_a_restart(tmp_path: Path) -> None:
    """An intake in use but never written, then one whose blocks are all done: seq carries on by one."""
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        mark = ob.put(ev(EventType.CAMERA_FAULT))  # SQLite only: the intake holds no event
    for _ in range(2):
        with Outbox(db, site="s", device="d", seq_mark=mark) as again:
            assert again.recovery.seq_resumed_above is None
            mark = again.put(ev(EventType.CAMERA_FAULT))
    mark, top = _acked_presses(db)
    assert _next_seq(db, top) == top + 1


def _failing_pread(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """The disk answers EIO to reading ``path``, as a failing SD card does."""
    real = os.pread
    bad = os.stat(path).st_ino

    def pread(fd: int, n: int, offset: int) -> bytes:
        if os.fstat(fd).st_ino == bad:
            raise OSError(5, "Input/output error")
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)


def test_unreadable__an_intake_that_cannot_be_read_is_moved_aside_and_the_agent_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    mark, top = _acked_presses(db)
    path = intake_path(db)
    _failing_pread(monkeypatch, path)
    with caplog.at_level(logging.CRITICAL), Outbox(db, site="s", device="d", seq_mark=mark) as again:
        assert again.put_row(ev()).seq > top, "the unreadable file's seqs are not handed out again"
        assert again.put_row(ev(EventType.CAMERA_FAULT)).seq > top
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.db.intake.corrupt-")]
    assert len(aside) == 1
    assert f"outbox intake {path} cannot be read" in caplog.text
    assert str(aside[0]) in caplog.text
    monkeypatch.undo()
    assert _next_seq(db, top) > top


def test_unreadable__a_folder_in_the_intakes_place_does_not_hand_out_its_seqs_again(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    mark, top = _acked_presses(db)
    path = intake_path(db)
    path.unlink()
    path.mkdir()
    first = _next_seq(db, mark)
    assert first > top
    assert _next_seq(db, first) == first + 1, "SQLite alone now: counted once"
