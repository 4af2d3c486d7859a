"""A real alarm pressed while other events are held in memory is made durable in the outbox's intake.

Once any event was held (SQLite failing), every later press used to be held in
memory only, although the intake, which does not touch SQLite, could have put
it on disk: a power cut then lost the press.  The inputs thread must still
never wait on an outbox known to fail: the intake is used only when the
outbox's lock is free at once, and if the intake fails the press is held.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.events import EventType
from agent.outbox import Outbox
from agent.recorder import Recorder
from agent.recorder_hooks import Hooks
from tests.support.clocks import synced_clock
from tests.support.waiting import eventually

CLOCK = synced_clock()
PRESS = {"pin": 17, "contact": "normally_open"}


class CountingOutbox(Outbox):
    """An outbox that counts the SQLite commits that failed (so a test knows the retry thread has tried)."""

    failed = 0

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        try:
            return super()._insert(rows, all_alarms=all_alarms)
        except sqlite3.Error:
            self.failed += 1
            raise


class StuckOutbox(Outbox):
    """SQLite is locked; the retry thread's commit hangs inside the outbox's lock until the test lets go."""

    broken = True
    inside = False
    stuck: threading.Event
    unstick: threading.Event

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        if self.broken and threading.current_thread().name == "recorder-retry":
            self.inside = True  # a commit waiting out its busy timeout, the outbox's lock held
            self.stuck.set()
            self.unstick.wait(10.0)
            self.inside = False
        if self.broken:
            raise sqlite3.OperationalError("database is locked")
        return super()._insert(rows, all_alarms=all_alarms)


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[CountingOutbox]:
    ob = CountingOutbox(tmp_path / "outbox.db", site="main", device="gate-1", busy_timeout_s=0.1)
    yield ob
    ob.close()


@pytest.fixture
def sqlite_locked(counting: CountingOutbox) -> Iterator[sqlite3.Connection]:
    """Another connection holds SQLite's write lock: the outbox's commits fail after their busy timeout."""
    conn = sqlite3.connect(counting.path, isolation_level=None, timeout=10)
    conn.execute("BEGIN IMMEDIATE")
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def hold_a_camera_fault(recorder: Recorder, outbox: CountingOutbox) -> int:
    """Record a camera fault SQLite cannot take; return once the retry thread has tried it too (and sleeps)."""
    recorder.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})
    assert recorder.held_count() == 1
    eventually(lambda: outbox.failed >= 2 and not outbox._lock.locked(), what="the retry thread's first attempt")
    seq: int = recorder.recent()[0]["seq"]
    return seq


def test_held__a_press_behind_a_held_event_is_made_durable_in_the_intake(
    counting: CountingOutbox, sqlite_locked: sqlite3.Connection
) -> None:
    lit: list[str] = []
    recorder = Recorder(
        counting,
        clock=CLOCK,
        site="main",
        device="gate-1",
        retry_s=60.0,
        hooks=Hooks(alarm_recorded=lambda i, s: lit.append(i)),
    )
    try:
        held_seq = hold_a_camera_fault(recorder, counting)

        recorder.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)
        press = recorder.recent()[0]
        assert press["type"] == "panic"
        assert press["on_disk"] is True, "the press is in memory only: a crash or power cut now loses it"
        assert press["seq"] > held_seq, "the held event keeps its lower seq"
        assert [r.id for r in counting.next_batch(0, 10, urgent=True)] == [press["id"]]
        assert [r.type for r in recorder.held()] == ["camera_fault"], "only the camera fault waits in memory"
        assert lit == [press["id"]], "the LED says recorded"

        sqlite_locked.execute("ROLLBACK")  # SQLite takes writes again
        assert recorder.flush_held() == 1
        assert [(r.seq, r.type) for r in counting.next_batch(0, 10)] == [
            (held_seq, "camera_fault"),
            (press["seq"], "panic"),
        ]
    finally:
        recorder.close()


def test_held__a_test_press_stays_behind_the_held_events(
    counting: CountingOutbox, sqlite_locked: sqlite3.Connection
) -> None:
    recorder = Recorder(counting, clock=CLOCK, site="main", device="gate-1", retry_s=60.0, test_mode=lambda _m: True)
    try:
        hold_a_camera_fault(recorder, counting)
        recorder.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)
        assert recorder.recent()[0]["on_disk"] is False, "routine lane: its higher seq must not overtake the fault"
        assert recorder.held_count() == 2
    finally:
        recorder.close()


def test_held__a_press_never_waits_for_a_commit_stuck_in_the_outbox(tmp_path: Path) -> None:
    outbox = StuckOutbox(tmp_path / "outbox.db", site="main", device="gate-1")
    outbox.stuck, outbox.unstick = threading.Event(), threading.Event()
    recorder = Recorder(outbox, clock=CLOCK, site="main", device="gate-1", retry_s=0.05)
    try:
        recorder.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})  # fails at once: held
        assert outbox.stuck.wait(10.0), "the retry thread's commit never started"

        recorder.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)
        assert outbox.inside, "the press waited for the stuck commit to end"
        assert recorder.recent()[0]["on_disk"] is False, "the intake was busy: the press is held"
        assert recorder.held_count() == 2

        outbox.broken = False
        outbox.unstick.set()
        eventually(lambda: recorder.held_count() == 0, what="both held events stored")
        assert [r.type for r in outbox.next_batch(0, 10)] == ["camera_fault", "panic"]
        assert all(e["on_disk"] for e in recorder.recent())
    finally:
        outbox.unstick.set()
        recorder.close()
        outbox.close()


def test_held__a_press_the_intake_fails_to_sync_is_held_not_lost(
    counting: CountingOutbox,
    sqlite_locked: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder(counting, clock=CLOCK, site="main", device="gate-1", retry_s=60.0)
    try:
        held_seq = hold_a_camera_fault(recorder, counting)

        def eio(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", eio)  # the intake syncs with os.fdatasync; SQLite syncs in C
        recorder.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)
        monkeypatch.undo()
        press = recorder.recent()[0]
        assert press["on_disk"] is False, "not on disk: the press must be held"
        assert press["seq"] > held_seq
        assert [r.type for r in recorder.held()] == ["camera_fault", "panic"]
        assert "outbox intake" in caplog.text

        sqlite_locked.execute("ROLLBACK")
        recorder.flush_held()  # the retry thread, woken by the press, may store them first
        eventually(lambda: recorder.held_count() == 0, what="both held events stored")
        assert [r.type for r in counting.next_batch(0, 10)] == ["camera_fault", "panic"]
        assert [(r.seq, r.id) for r in counting.next_batch(0, 10) if r.type == "panic"] == [(press["seq"], press["id"])]
    finally:
        recorder.close()


class FailingOutbox(Outbox):
    """Every SQLite commit fails: events are held in memory under reserved seqs."""

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        raise sqlite3.OperationalError("disk I/O error")


def test_held__a_reserved_seq_is_in_the_saved_mark_before_the_sender_can_see_it(tmp_path: Path) -> None:
    """The mark used to be saved after the sender was woken: a held event published in between, then a
    power cut, and the restart gave its seq to a different event."""
    ob = FailingOutbox(tmp_path / "outbox.db", site="main", device="gate-1", intake=False)
    marks = [ob.top_seq()]
    seen: list[tuple[int, int]] = []  # (seq the sender could publish, mark on disk then)

    def sender_round() -> None:
        seen.extend((row.seq, marks[-1]) for row in rec.held())

    rec = Recorder(
        ob,
        clock=CLOCK,
        site="main",
        device="gate-1",
        retry_s=1000.0,
        hooks=Hooks(wake=sender_round, mark=lambda: marks.append(ob.top_seq())),
    )
    try:
        rec.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})
        assert seen, "the sender's round saw the held event"
        assert all(seq <= mark for seq, mark in seen), f"(seq, mark on disk): {seen}"
    finally:
        rec.close()
        ob.close()
