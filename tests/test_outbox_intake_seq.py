"""The intake and seq across crashes: switched off, half of the outbox lost, a failed sync, a mark mid-write.

A hunt found each of these giving a seq out twice (the centre orders on seq
and would take a new alarm for one it has) or bringing an acknowledged event
back.  A crash here is :func:`abandon` (the process's files close, nothing
moves into SQLite, nothing more is synced); a lost file is deleted or
overwritten in between.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.events import Event, EventType
from agent.outbox import Outbox
from tests.support.clocks import synced_clock
from tests.support.outboxfile import abandon, intake_path

CLOCK = synced_clock()


def ev(kind: EventType = EventType.PANIC) -> Event:
    return Event.create(CLOCK, kind, "x", data={"pin": 17})


class PowerCut(BaseException):
    """Nothing after it runs: not even the outbox's fallback to SQLite."""


def eio(_fd: int) -> None:
    raise OSError(5, "Input/output error")


def test_intake_seq__switching_the_intake_off_after_a_crash_loses_nothing_and_reuses_no_seq(tmp_path: Path) -> None:
    """``intake: false`` used to leave the file unread: its waiting alarm was lost and its seq given again."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    ob.put_row(ev(EventType.CAMERA_FAULT))  # SQLite: seq 1
    press = ob.put_row(ev())  # intake: seq 2, no PUBACK yet
    acked = ob.put_row(ev())  # intake: seq 3, acknowledged: its seq lives only in the intake
    ob.ack([acked.seq])
    abandon(ob)
    with Outbox(db, site="s", device="d", intake=False) as off:
        assert press.id in {r.id for r in off.next_batch(0, 10)}, "the waiting alarm is still pending"
        fresh = off.put_row(ev())
        assert fresh.seq > acked.seq
        assert off._intake is not None, "read for what it holds"
        assert not off._take_new, "and takes nothing new"
    assert not intake_path(db).exists(), "switched off: gone at the clean stop, its events and top in SQLite"
    with Outbox(db, site="s", device="d", intake=False) as again:
        assert press.id in {r.id for r in again.next_batch(0, 10)}
        assert again.put_row(ev()).seq > fresh.seq


@pytest.mark.parametrize("intake", [True, False])
def test_intake_seq__an_unreadable_outbox_db_never_reuses_a_seq_the_intake_masked(tmp_path: Path, intake: bool) -> None:
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d", intake=intake)
    press = ob.put_row(ev())  # the intake (when on): seq 1
    ob.ack([press.seq])
    mark = ob.top_seq()  # the heartbeat's tick saves 1
    published = {r.seq for r in ob.put_rows([ev(EventType.CAMERA_FAULT) for _ in range(3)])}  # SQLite: 2..4
    abandon(ob)
    db.write_bytes(b"\0" * 8192)  # the card lost outbox.db: nothing of it can be read
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with Outbox(db, site="s", device="d", seq_mark=mark, intake=intake) as again:
        assert again.put_row(ev(EventType.CAMERA_FAULT)).seq not in published
        assert again.recovery.seq_resumed_above is not None


def test_intake_seq__a_lost_intake_never_reuses_its_acknowledged_seqs(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    ob.put_row(ev(EventType.CAMERA_FAULT))  # SQLite: seq 1
    mark = ob.top_seq()
    presses = [ob.put_row(ev()) for _ in range(2)]  # intake: 2, 3, delivered: in no file but the intake
    ob.ack([r.seq for r in presses])
    abandon(ob)
    intake_path(db).unlink()
    with Outbox(db, site="s", device="d", seq_mark=mark) as again:
        assert again.put_row(ev(EventType.CAMERA_FAULT)).seq > presses[-1].seq


def test_intake_seq__turning_the_intake_on_for_an_outbox_that_never_had_one_does_not_jump(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d", intake=False) as ob:
        mark = ob.put(ev())
    with Outbox(db, site="s", device="d", seq_mark=mark) as on:
        assert on.recovery.seq_resumed_above is None
        assert on.put(ev()) == mark + 1


def test_intake_seq__a_press_whose_sync_failed_does_not_come_back_after_a_clean_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed write's block was never voided: the press came back as seq 2 after it was delivered as seq 3."""
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        first = ob.put_row(ev())
        monkeypatch.setattr(os, "fdatasync", eio)
        second = ob.put_row(ev(EventType.TAMPER))  # the intake fails under it: committed to SQLite
        monkeypatch.undo()
        assert second.seq == first.seq + 1
        assert ob.ack([first.seq, second.seq]) == 2
        third = ob.put_row(ev())  # SQLite from now on; acknowledged too
        assert ob.ack([third.seq]) == 1
    with Outbox(db, site="s", device="d") as again:
        assert again.next_batch(0, 10) == [], "delivered before the clean stop: nothing comes back"


def test_intake_seq__a_mark_saved_while_a_block_is_being_synced_is_not_a_replaced_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """top_seq() counted the block's seq before its fdatasync returned; saved then, and the power cut, the
    outbox looked replaced: seq jumped 1,000 and agent_started said so."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    first = ob.put_row(ev())
    ob.ack([first.seq])
    synced = tmp_path / "synced.intake"
    shutil.copyfile(intake_path(db), synced)  # what the disk holds
    marks: list[int] = []

    def tick_then_power_cut(_fd: int) -> None:
        marks.append(ob.top_seq())  # the heartbeat thread saves the mark now
        raise PowerCut

    monkeypatch.setattr(os, "fdatasync", tick_then_power_cut)
    with pytest.raises(PowerCut):
        ob.put_row(ev())
    monkeypatch.undo()
    abandon(ob)
    shutil.copyfile(synced, intake_path(db))  # the block never reached the disk
    assert marks == [first.seq]
    with Outbox(db, site="s", device="d", seq_mark=marks[0]) as again:
        assert again.recovery.seq_resumed_above is None


def test_intake_seq__with_the_intake_off_and_its_file_gone_seq_jumps_once_not_at_every_start(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        ob.ack([ob.put(ev())])
        mark = ob.top_seq()
    intake_path(db).unlink()  # switched off, and its file cleared away by hand
    with Outbox(db, site="s", device="d", intake=False, seq_mark=mark) as ob:
        assert ob.recovery.seq_resumed_above is not None, "once: what the file held is unknown"
        mark = ob.top_seq()
    for _ in range(3):
        with Outbox(db, site="s", device="d", intake=False, seq_mark=mark) as ob:
            assert ob.recovery.seq_resumed_above is None, "a clean restart"
            mark = ob.top_seq()


def test_intake_seq__a_press_whose_sync_and_commit_both_failed_survives_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unsynced block is the press's only copy on disk while the recorder holds it in memory: blanking it
    at the failure (as a first fix of the resent-after-restart case did) lost the press to a crash."""
    import sqlite3

    from agent.errors import OutboxError

    class Locked(Outbox):
        def _insert(self, rows: object, *, all_alarms: bool) -> list[int]:
            raise sqlite3.OperationalError("database is locked")

    db = tmp_path / "outbox.db"
    ob = Locked(db, site="s", device="d")
    press = ev()
    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(OutboxError):
        ob.put_row(press)  # the recorder would hold it in memory now
    monkeypatch.undo()
    abandon(ob)  # and the agent crashes
    with Outbox(db, site="s", device="d") as again:
        assert press.id in {r.id for r in again.next_batch(0, 10)}, "the press is sent after the restart"
