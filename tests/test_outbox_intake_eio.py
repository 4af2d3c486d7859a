"""An intake the disk will not wholly read at start (EIO, a bad sector): no alarm is lost for a block it need not.

The disk is simulated by ``os.pread`` failing for the intake file only (the
tests run as root; there is no real bad sector), as in
tests/test_outbox_damage_more.py.  Rules: docs/architecture.md, the intake.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.buttonpath import ButtonPath
from agent.events import Event, EventType, Stamp, with_seq
from agent.outbox import Outbox
from agent.outbox_db import IntakeRecovery
from agent.outbox_intake import SLOT_BYTES, SLOTS, decode
from tests.support.clocks import synced_clock
from tests.support.contract import Validate
from tests.support.outboxfile import abandon, intake_path

CLOCK = synced_clock()


def panic() -> Event:
    return Event.create(CLOCK, EventType.PANIC, "b1", data={"pin": 17})


def _bad_blocks(monkeypatch: pytest.MonkeyPatch, path: Path, blocks: set[int] | None = None) -> None:
    """The disk answers EIO to reading these blocks of ``path`` (None: all of it), as a failing SD card does."""
    real = os.pread
    bad = os.stat(path).st_ino

    def pread(fd: int, n: int, offset: int) -> bytes:
        hit = range(offset // SLOT_BYTES, (offset + max(n, 1) - 1) // SLOT_BYTES + 1)
        if os.fstat(fd).st_ino == bad and (blocks is None or any(i in blocks for i in hit)):
            raise OSError(5, "Input/output error")
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)


def _block_of(path: Path, event_id: str) -> int:
    data = path.read_bytes()
    return next(
        at // SLOT_BYTES
        for at in range(0, len(data), SLOT_BYTES)
        if (got := decode(data[at : at + SLOT_BYTES])) and got[1].id == event_id
    )


def _pending_ids(ob: Outbox) -> set[str]:
    return {r.id for r in ob.next_batch(0, 1000)}


def test_eio__a_bad_sector_in_a_free_block_keeps_the_waiting_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block 0 (never written) is unreadable: the alarm in another block is sent, the file stays, the loss is told."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    press = ob.put_row(panic())  # put returned: durable
    abandon(ob)  # a power cut before it was sent
    path = intake_path(db)
    assert _block_of(path, press.id) != 0, "precondition: the bad block is not the alarm's"
    _bad_blocks(monkeypatch, path, {0})
    with Outbox(db, site="s", device="d", seq_mark=press.seq) as again:
        assert press.id in _pending_ids(again), "a bad sector elsewhere lost the alarm put() returned for"
        assert again.recovery.intake == IntakeRecovery(moved_aside=None, unreadable_blocks=1)
        assert again.recovery.seq_resumed_above is not None, "block 0 may have held the top seq: jump once"
        assert again.put_row(panic()).seq > press.seq
    assert not list(tmp_path.glob("outbox.db.intake.corrupt-*")), "a readable file is never moved aside"


def test_eio__an_unreadable_block_is_neither_blanked_nor_reused_so_a_later_read_still_sends_its_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block that failed to read once may read again (a retried sector): its live alarm must still be there."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    hidden = ob.put_row(panic())
    seen = ob.put_row(panic())
    abandon(ob)
    path = intake_path(db)
    i = _block_of(path, hidden.id)
    before = path.read_bytes()[i * SLOT_BYTES : (i + 1) * SLOT_BYTES]
    _bad_blocks(monkeypatch, path, {i})
    again = Outbox(db, site="s", device="d", seq_mark=seen.seq)
    assert _pending_ids(again) == {seen.id}
    intake = again._intake
    assert intake is not None
    last = seen.seq
    for _ in range(SLOTS):  # fill every block the intake hands out
        if intake.free == 0:
            break
        last = again.put_row(panic()).seq
    assert intake.free == 0
    abandon(again)
    assert path.read_bytes()[i * SLOT_BYTES : (i + 1) * SLOT_BYTES] == before, "the unreadable block was written"
    monkeypatch.undo()  # the sector reads again
    with Outbox(db, site="s", device="d", seq_mark=last) as third:
        assert hidden.id in _pending_ids(third)
        assert third.recovery.intake is None


def test_eio__an_intake_switched_off_is_kept_at_stop_while_a_block_of_it_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``outbox.intake: false`` removes the old file at a clean stop, but not the only copy of an alarm."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    hidden = ob.put_row(panic())
    abandon(ob)
    path = intake_path(db)
    _bad_blocks(monkeypatch, path, {_block_of(path, hidden.id)})
    with Outbox(db, site="s", device="d", seq_mark=hidden.seq, intake=False) as off:
        assert off.recovery.intake == IntakeRecovery(moved_aside=None, unreadable_blocks=1)
    assert path.exists()
    monkeypatch.undo()
    with Outbox(db, site="s", device="d", seq_mark=hidden.seq, intake=False) as again:
        assert hidden.id in _pending_ids(again)
    assert not path.exists(), "once read, its alarm is in SQLite and the file goes"


def test_eio__an_intake_none_of_whose_blocks_can_be_read_is_moved_aside_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    press = ob.put_row(panic())
    abandon(ob)
    _bad_blocks(monkeypatch, intake_path(db))
    with Outbox(db, site="s", device="d", seq_mark=press.seq) as again:
        rec = again.recovery.intake
        assert again.put_row(panic()).seq > press.seq
    [aside] = tmp_path.glob("outbox.db.intake.corrupt-*")
    assert rec == IntakeRecovery(moved_aside=aside, unreadable_blocks=SLOTS)


class _Recorder:
    def __init__(self) -> None:
        self.recorded: list[tuple[EventType, str, Stamp, dict[str, Any]]] = []

    def record(self, type_: EventType, source: str, at: Stamp, data: dict[str, Any]) -> None:
        self.recorded.append((type_, source, at, data))


class _Started(ButtonPath):
    """Only what ``_record_started`` reads of the agent."""

    def __init__(self, outbox: Outbox, recorder: _Recorder) -> None:
        self.clock = CLOCK
        self.outbox = outbox
        self.recorder = recorder  # type: ignore[assignment]
        self._start_reason = "restart"
        self._state_lock = threading.Lock()

    def save_state(self) -> None:
        pass


@pytest.mark.parametrize("blocks", [{5}, None], ids=["one_block", "whole_file"])
def test_eio__agent_started_tells_the_centre(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validate: Validate, blocks: set[int] | None
) -> None:
    """The loss reaches the centre in ``intake_recovered``, valid against the contract's schema."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    press = ob.put_row(panic())
    abandon(ob)
    _bad_blocks(monkeypatch, intake_path(db), blocks)
    with Outbox(db, site="s", device="d", seq_mark=press.seq) as again:
        recorder = _Recorder()
        _Started(again, recorder)._record_started()
    [(type_, source, at, data)] = recorder.recorded
    doc = json.loads(with_seq(Event.create(CLOCK, type_, source, at=at, data=data).body("s", "d"), 2))
    got = validate("event", doc)["data"]["intake_recovered"]
    if blocks is None:
        [aside] = tmp_path.glob("outbox.db.intake.corrupt-*")
        assert got == {"moved_aside": str(aside), "unreadable_blocks": SLOTS}
    else:
        assert got == {"moved_aside": None, "unreadable_blocks": 1}
    assert "seq_resumed_above" in data
