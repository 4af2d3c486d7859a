"""A press meets another writer, a failing SQLite or a mixed batch, and is still on disk before it is sent.

Each case was found by a hunt and held the press in memory only (published
before it was durable, lost with a power cut): a press during another
thread's healthy commit, a press in the same poll as an ``input_restored``
while SQLite failed, and a press held while a commit was stuck, which stayed
in memory for as long as SQLite failed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.model import Contact, InputConfig, InputKind
from agent.events import Event, EventType
from agent.inputs import Inputs
from agent.outbox import Outbox
from agent.recorder import Recorder
from agent.recorder_hooks import Hooks
from tests.support.clocks import synced_clock
from tests.support.outboxfile import abandon
from tests.support.waiting import eventually

CLOCK = synced_clock()
PRESS = {"pin": 17, "contact": "normally_open"}


class SlowOutbox(Outbox):
    """A camera thread's commit that takes as long as the test says (an SD card's slow fsync): until ``gate``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gate, self.inside = threading.Event(), threading.Event()
        super().__init__(*args, **kwargs)

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        if threading.current_thread().name == "camera":
            self.inside.set()
            self.gate.wait(10.0)
        return super()._insert(rows, all_alarms=all_alarms)


class BrokenSqlite(Outbox):
    """SQLite fails every commit while ``broken``; the intake file still works."""

    broken = True

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        if self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        return super()._insert(rows, all_alarms=all_alarms)


def camera_commit(tmp_path: Path) -> tuple[SlowOutbox, Recorder, threading.Thread]:
    """An outbox, its recorder, and a camera thread whose commit waits for ``ob.gate`` once started."""
    ob = SlowOutbox(tmp_path / "outbox.db", site="main", device="gate-1")
    rec = Recorder(ob, clock=CLOCK, site="main", device="gate-1")
    cam = threading.Thread(
        target=rec.record, args=(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {}), name="camera", daemon=True
    )
    return ob, rec, cam


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[BrokenSqlite]:
    ob = BrokenSqlite(tmp_path / "outbox.db", site="main", device="gate-1")
    yield ob
    ob.broken = False
    ob.close()


def test_contention__a_press_during_another_threads_healthy_commit_waits_for_it_and_is_on_disk(
    tmp_path: Path,
) -> None:
    ob, rec, cam = camera_commit(tmp_path)
    try:
        cam.start()
        assert ob.inside.wait(10.0), "the camera's commit never started"

        def press() -> None:
            rec.record_deferring([(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)])()

        presser = threading.Thread(target=press, daemon=True)
        presser.start()
        threading.Timer(0.05, ob.gate.set).start()  # the fsync ends 50 ms into the press's wait
        presser.join(10.0)
        cam.join(10.0)
        panic = next(e for e in rec.recent() if e["type"] == "panic")
        assert panic["on_disk"], "held in memory (sent before durable) although the outbox was healthy"
        assert rec.held_count() == 0
        assert [r.type for r in ob.next_batch(0, 10)] == ["camera_fault", "panic"]
    finally:
        ob.gate.set()
        rec.close()
        ob.close()


def test_contention__a_press_in_a_mixed_batch_reaches_the_intake_while_sqlite_fails__seqs_in_batch_order(
    broken: BrokenSqlite,
) -> None:
    rec = Recorder(broken, clock=CLOCK, site="main", device="gate-1", retry_s=60.0)
    try:
        rec.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})
        assert rec.held_count() == 1
        rec.record_deferring(
            [
                (EventType.INPUT_RESTORED, "back-door", CLOCK.stamp(), {"held_s": 130.0}),
                (EventType.PANIC, "panic", CLOCK.stamp(), PRESS),
            ]
        )()
        restored, press = rec.recent()[1], rec.recent()[0]
        assert press["type"] == "panic"
        assert press["on_disk"], "the press is in memory only: a power cut loses it"
        assert not restored["on_disk"]
        assert restored["seq"] < press["seq"], "seq says in which order they happened"
        assert [r.id for r in broken.next_batch(0, 10, urgent=True)] == [press["id"]]
        assert [r.type for r in rec.held()] == ["camera_fault", "input_restored"]
    finally:
        rec.close()


def test_contention__a_held_press_moves_into_the_intake_while_sqlite_still_fails(broken: BrokenSqlite) -> None:
    rec = Recorder(broken, clock=CLOCK, site="main", device="gate-1", retry_s=60.0)
    rec._ensure_thread = lambda: None  # type: ignore[method-assign]  # only the test's flushes store them
    try:
        rec.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})
        intake = broken._intake
        broken._intake = None  # a stuck commit: the intake cannot be reached, the press is held
        rec.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)
        broken._intake = intake
        press = rec.recent()[0]
        assert not press["on_disk"]
        assert rec.held_count() == 2

        assert rec.flush_held() == 1, "SQLite fails: the camera fault stays, the press goes to the intake"
        assert [r.type for r in rec.held()] == ["camera_fault"]
        assert rec.recent()[0]["on_disk"]
        assert [(r.seq, r.id) for r in broken.next_batch(0, 10)] == [(press["seq"], press["id"])]

        broken.broken = False
        assert rec.flush_held() == 1
        assert [r.type for r in broken.next_batch(0, 10)] == ["camera_fault", "panic"]
    finally:
        rec.close()


def test_contention__a_seq_below_the_intakes_top_keeps_the_order_and_the_top(tmp_path: Path) -> None:
    """A reserved seq written after higher ones: pending rows stay in seq order, the file keeps its top seq."""
    path = tmp_path / "outbox.db"
    ob = Outbox(path, site="main", device="gate-1")
    low = ob.reserve_seq()
    rec = Recorder(ob, clock=CLOCK, site="main", device="gate-1")
    try:
        rec.record(EventType.PANIC, "a", CLOCK.stamp(), PRESS)
        rec.record(EventType.PANIC, "b", CLOCK.stamp(), PRESS)
        top = ob.top_seq()
        late = Event.create(CLOCK, EventType.PANIC, "c", at=CLOCK.stamp(), test=False, data=PRESS)
        taken = ob.take_in_now([late], [low])
        assert taken is not None
        assert taken[0].seq == low
        assert [r.seq for r in ob.next_batch(0, 10)] == [low, low + 1, low + 2]
        assert [r.seq for r in ob.next_batch(0, 1)] == [low], "the lowest pending row first"
        ob.ack([low + 1, low + 2])  # the top's block is done, not freed: the file's memory of its seq
    finally:
        rec.close()
        abandon(ob)  # a crash: nothing moves into SQLite
    again = Outbox(path, site="main", device="gate-1")
    try:
        assert again.top_seq() >= top, "a restart would hand out a seq already used"
        assert [r.seq for r in again.next_batch(0, 10)] == [low]
    finally:
        again.close()


def test_contention__a_camera_named_like_an_input_leaves_the_inputs_last_event_alone(
    tmp_path: Path, mock_factory: Any
) -> None:
    ob = Outbox(tmp_path / "outbox.db", site="main", device="gate-1")
    box: list[Inputs] = []
    rec = Recorder(
        ob,
        clock=CLOCK,
        site="main",
        device="gate-1",
        hooks=Hooks(noted=lambda s, ts, test: box[0].note_event(s, ts, test=test)),
    )
    cfg = InputConfig("gate", InputKind.PANIC_BUTTON, 17, Contact.NORMALLY_OPEN, 50, 0.0, False)
    inputs = Inputs((cfg,), pin_factory=mock_factory, clock=CLOCK, emit=rec.record_deferring)
    box.append(inputs)
    inputs.arm(start_thread=False)
    try:
        rec.record(EventType.CAMERA_FAULT, "gate", CLOCK.stamp(), {"detail": "timeout"})
        assert inputs.states()["gate"].last_event is None, "the button shows an event it never had"
        rec.record(EventType.PANIC, "gate", CLOCK.stamp(), PRESS)
        assert inputs.states()["gate"].last_event is not None
    finally:
        inputs.close()
        rec.close()
        ob.close()


def test_contention__a_commit_stuck_past_the_wait_holds_the_press_instead_of_stalling_the_inputs(
    tmp_path: Path,
) -> None:
    ob, rec, cam = camera_commit(tmp_path)
    try:
        cam.start()
        assert ob.inside.wait(10.0)
        t0 = time.monotonic()
        rec.record_deferring([(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)])()
        assert time.monotonic() - t0 < 5.0, "the press waited for the stuck commit"
        assert rec.held_count() == 1, "held in memory, sent from there, stored by the retry thread"
        ob.gate.set()
        eventually(lambda: rec.held_count() == 0, what="the held press stored once the commit ended")
        assert sorted(r.type for r in ob.next_batch(0, 10)) == ["camera_fault", "panic"]
    finally:
        ob.gate.set()
        cam.join(10.0)
        rec.close()
        ob.close()


class CountingSqlite(BrokenSqlite):
    """Which threads tried a SQLite commit."""

    callers: list[str]

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        self.callers.append(threading.current_thread().name)
        return super()._insert(rows, all_alarms=all_alarms)


def test_contention__a_held_press_stored_in_the_intake_leaves_sqlite_known_to_fail(tmp_path: Path) -> None:
    """Stored through the intake, a held press used to clear "failing": the next mixed batch then ran a SQLite
    commit known to fail on the inputs thread (a busy timeout long) and its press was held in memory only."""
    ob = CountingSqlite(tmp_path / "outbox.db", site="main", device="gate-1")
    ob.callers = []
    rec = Recorder(ob, clock=CLOCK, site="main", device="gate-1", retry_s=60.0)
    try:
        intake, ob._intake = ob._intake, None  # the intake cannot take it (full, the link down)
        rec.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)
        ob._intake = intake
        assert rec.held_count() == 1
        rec.flush_held()
        eventually(lambda: rec.held_count() == 0, what="the held press in the intake")
        me = threading.current_thread().name
        before = ob.callers.count(me)
        rec.record_deferring(
            [
                (EventType.INPUT_RESTORED, "back-door", CLOCK.stamp(), {}),
                (EventType.PANIC, "panic", CLOCK.stamp(), PRESS),
            ]
        )()
        assert ob.callers.count(me) == before, "the inputs thread ran a SQLite commit known to fail"
        assert rec.recent()[0]["on_disk"]
    finally:
        ob.broken = False
        rec.close()
        ob.close()


class SlowIntake(BrokenSqlite):
    """The intake's write waits until the test lets go (another thread holds the outbox's lock meanwhile)."""

    entered: threading.Event
    go: threading.Event

    def take_in_now(self, events: Any, seqs: Any = None, **kw: Any) -> Any:
        self.entered.set()
        self.go.wait(10.0)
        return super().take_in_now(events, seqs, **kw)


def test_contention__a_camera_event_held_during_a_presss_intake_write_comes_after_the_batch(tmp_path: Path) -> None:
    ob = SlowIntake(tmp_path / "outbox.db", site="main", device="gate-1")
    ob.entered, ob.go = threading.Event(), threading.Event()
    rec = Recorder(ob, clock=CLOCK, site="main", device="gate-1", retry_s=60.0)

    def poll() -> None:
        rec.record_deferring(
            [
                (EventType.INPUT_RESTORED, "back-door", CLOCK.stamp(), {}),
                (EventType.PANIC, "panic", CLOCK.stamp(), PRESS),
            ]
        )()

    inputs = threading.Thread(target=poll, name="inputs", daemon=True)
    try:
        rec.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})
        inputs.start()
        assert ob.entered.wait(10.0)
        rec.record(EventType.CAMERA_FAULT, "cam2", CLOCK.stamp(), {})  # a camera thread, meanwhile
        ob.go.set()
        inputs.join(10.0)
        held = [(r.seq, r.type) for r in rec.held()]
        assert held == sorted(held), "held events are sent in this order: it must be seq order"
        assert [t for _, t in held] == ["camera_fault", "input_restored", "camera_fault"]
    finally:
        ob.go.set()
        ob.broken = False
        rec.close()
        ob.close()


def test_contention__a_press_behind_held_events_is_out_of_the_saved_mark_until_its_block_is_synced(
    broken: BrokenSqlite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mark saved (by the heartbeat) during the sync, then a power cut: the same outbox looked replaced."""
    rec = Recorder(broken, clock=CLOCK, site="main", device="gate-1", retry_s=60.0)
    try:
        rec.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})
        held_seq = rec.recent()[0]["seq"]
        marks: list[int] = []
        real = os.fdatasync

        def sync(fd: int) -> None:
            marks.append(broken.top_seq())
            real(fd)

        monkeypatch.setattr(os, "fdatasync", sync)
        rec.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)
        monkeypatch.undo()
        assert rec.recent()[0]["on_disk"]
        assert marks == [held_seq], "the press's seq counted in the mark before its block was on disk"
    finally:
        rec.close()


def test_contention__the_oldest_pending_age_counts_a_held_event_written_to_the_intake_last(tmp_path: Path) -> None:
    now = [1_000_000.0]
    ob = Outbox(tmp_path / "outbox.db", site="main", device="gate-1", wall=lambda: now[0])
    try:
        low = ob.reserve_seq()  # a press held in memory
        assert ob.take_in_now([Event.create(CLOCK, EventType.PANIC, "b", test=False, data=PRESS)]) is not None
        now[0] += 600.0
        assert ob.take_in_now([Event.create(CLOCK, EventType.PANIC, "a", test=False, data=PRESS)], [low])
        age = ob.stats().oldest_age_s
        assert age is not None
        assert age >= 600.0, "the oldest pending event waits since before the held one was written"
    finally:
        ob.close()


def test_contention__a_held_event_keeps_its_recording_time_when_stored(tmp_path: Path) -> None:
    """Stored after the disk came back, a held event got the time of storing: its wait in memory was lost from
    the transmission time (status link.stats) and from the outbox's oldest age."""
    now = [1_000_000.0]
    ob = BrokenSqlite(tmp_path / "outbox.db", site="main", device="gate-1", wall=lambda: now[0])
    rec = Recorder(ob, clock=CLOCK, site="main", device="gate-1", retry_s=60.0)
    rec._ensure_thread = lambda: None  # type: ignore[method-assign]  # only the test's flushes store them
    try:
        rec.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})
        recorded = rec.held()[0].created
        intake, ob._intake = ob._intake, None
        rec.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)  # held too: the intake cannot take it
        ob._intake = intake
        press_recorded = rec.held()[1].created
        now[0] += 600.0
        assert rec.flush_held() == 1, "SQLite still fails: the press goes to the intake"
        ob.broken = False
        assert rec.flush_held() == 1
        stored = {r.type: r.created for r in ob.next_batch(0, 10)}
        assert stored == {"camera_fault": pytest.approx(recorded, abs=0.01), "panic": pytest.approx(press_recorded)}
    finally:
        rec.close()
        ob.close()


def test_contention__held_events_stored_are_handed_to_the_sender(tmp_path: Path) -> None:
    """A held alarm stored below its lane's cursor waited for the whole routine backlog: nothing told the sender."""
    offered: list[list[int]] = []
    ob = BrokenSqlite(tmp_path / "outbox.db", site="main", device="gate-1")
    rec = Recorder(
        ob,
        clock=CLOCK,
        site="main",
        device="gate-1",
        retry_s=60.0,
        hooks=Hooks(offer=lambda rows: offered.append([r.seq for r in rows])),
    )
    rec._ensure_thread = lambda: None  # type: ignore[method-assign]  # only the test's flushes store them
    try:
        rec.record(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {})
        intake, ob._intake = ob._intake, None
        rec.record(EventType.PANIC, "panic", CLOCK.stamp(), PRESS)
        ob._intake = intake
        fault, press = (r.seq for r in rec.held())
        offered.clear()
        assert rec.flush_held() == 1
        assert offered == [[press]], "the press stored in the intake is handed over"
        ob.broken = False
        assert rec.flush_held() == 1
        assert offered == [[press], [fault]]
    finally:
        rec.close()
        ob.close()
