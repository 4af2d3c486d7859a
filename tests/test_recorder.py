"""The recorder: events held when the outbox cannot write, stored as soon as it can, bounded and counted.

The outbox is made unusable for real: a second SQLite connection holds the
write lock (``BEGIN IMMEDIATE``), and the outbox's busy timeout is short so a
test does not wait ten seconds per attempt.  Faults the disk cannot easily
produce on demand (an eviction transaction or a runtime DatabaseError) come
from a subclass seam that raises them at the point SQLite would.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.events import Event, EventType, Stamp
from agent.outbox import Outbox
from agent.recorder import Recorder
from tests.support.broker import Broker
from tests.support.clocks import synced_clock
from tests.support.waiting import eventually

CLOCK = synced_clock()


class WriteLock:
    """Another connection holding the outbox's write lock, as a stuck writer or a slow disk would.

    The outboxes here commit straight to SQLite (``intake=False``): with the
    intake a press needs SQLite only once the intake is full, and these tests
    are about what happens then.
    """

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.held = False

    def take(self) -> WriteLock:
        self.conn.execute("BEGIN IMMEDIATE")
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.conn.execute("COMMIT")
            self.held = False

    def close(self) -> None:
        self.release()
        self.conn.close()


def item(kind: EventType = EventType.PANIC, source: str = "panic") -> tuple[EventType, str, Stamp, dict[str, Any]]:
    return (kind, source, CLOCK.stamp(), {})


def stored(outbox: Outbox) -> dict[str, int]:
    return {r.id: r.seq for r in outbox.next_batch(0, 10_000)}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Outbox, Recorder, WriteLock]]:
    outbox = Outbox(tmp_path / "outbox.db", site="main", device="gate-1", busy_timeout_s=0.2, intake=False)
    recorder = Recorder(outbox, clock=CLOCK, site="main", device="gate-1", retry_s=0.1)
    lock = WriteLock(tmp_path / "outbox.db")
    yield outbox, recorder, lock
    lock.close()
    recorder.close()
    outbox.close()


def test_recorder__held_while_locked_then_stored_in_seq_order_as_soon_as_writes_work(
    rig: tuple[Outbox, Recorder, WriteLock], caplog: pytest.LogCaptureFixture
) -> None:
    outbox, recorder, lock = rig
    first = outbox.put(Event.create(CLOCK, EventType.CAMERA_FAULT, "cam"))
    lock.take()
    recorder.record_many([item()])
    recorder.record_many([item(EventType.TAMPER, "lid"), item()])
    held = recorder.held()
    assert [r.type for r in held] == ["panic", "tamper", "panic"]
    assert [r.seq for r in held] == [first + 1, first + 2, first + 3], "held events get their seqs at once"
    assert [e["on_disk"] for e in recorder.recent()] == [False, False, False]
    assert "held panic from panic in memory, not yet on disk" in caplog.text
    lock.release()
    eventually(lambda: recorder.held_count() == 0, what="held events to be stored")
    assert sorted(stored(outbox).values()) == [first, first + 1, first + 2, first + 3]
    assert {r.id: r.seq for r in held} == {i: s for i, s in stored(outbox).items() if s > first}
    assert all(e["on_disk"] for e in recorder.recent())
    recorder.record_many([item()])
    assert max(stored(outbox).values()) == first + 4, "a new event goes after the held ones, never reusing a seq"


def test_recorder__memory_fallback_drops_non_alarms_first_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", site="main", device="gate-1", busy_timeout_s=0.1, intake=False)
    recorder = Recorder(outbox, clock=CLOCK, site="main", device="gate-1", max_held=3, retry_s=60)
    lock = WriteLock(tmp_path / "outbox.db").take()
    try:
        recorder.record_many([item(EventType.CAMERA_FAULT, "cam"), item(), item(EventType.CAMERA_FAULT, "cam")])
        recorder.record_many([item(), item()])
        assert [r.type for r in recorder.held()] == ["panic", "panic", "panic"]
        assert outbox.stats().dropped == 2
        recorder.record_many([item(EventType.TAMPER, "lid")])
        assert [r.type for r in recorder.held()] == ["panic", "panic", "tamper"], "only alarms left: oldest goes"
        assert outbox.stats().dropped == 3
        assert "memory fallback full" in caplog.text
    finally:
        lock.close()
        recorder.close()
    assert outbox.stats().dropped == 3
    outbox.close()
    with Outbox(tmp_path / "outbox.db", site="main", device="gate-1") as again:
        assert again.stats().dropped == 3, "drops from memory are persisted with the next commit"


class FaultyOutbox(Outbox):
    """Raises what SQLite raises at two points: the eviction transaction, and the insert itself."""

    eviction_faults = 0
    insert_faults = 0

    def _make_room_for_non_alarm(self) -> None:
        if self.eviction_faults:
            self.eviction_faults -= 1
            raise sqlite3.OperationalError("database is locked")
        super()._make_room_for_non_alarm()

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        if self.insert_faults:
            self.insert_faults -= 1
            raise sqlite3.DatabaseError("database disk image is malformed")
        return super()._insert(rows, all_alarms=all_alarms)


@pytest.mark.parametrize("fault", ["eviction", "insert"])
def test_recorder__database_faults_never_raise_and_lose_nothing(tmp_path: Path, fault: str) -> None:
    """Issue 9 item 5: these escaped put_many raw and killed the inputs thread with its batch."""
    outbox = FaultyOutbox(tmp_path / "outbox.db", site="main", device="gate-1", intake=False)
    setattr(outbox, f"{fault}_faults", 1)
    recorder = Recorder(outbox, clock=CLOCK, site="main", device="gate-1", retry_s=0.05)
    try:
        recorder.record_many([item(), item(EventType.CAMERA_FAULT, "cam")])  # must not raise
        eventually(lambda: recorder.held_count() == 0, what="held events to be stored")
        assert sorted(r.type for r in outbox.next_batch(0, 10)) == ["camera_fault", "panic"]
    finally:
        recorder.close()
        outbox.close()


def test_recorder__recent_events_are_safe_across_threads(tmp_path: Path) -> None:
    """Issue 9 item 5: on main, delivery iterated the deque while other threads appended (RuntimeError)."""
    outbox = Outbox(tmp_path / "outbox.db", site="main", device="gate-1")
    recorder = Recorder(outbox, clock=CLOCK, site="main", device="gate-1")
    errors: list[BaseException] = []
    stop = threading.Event()

    def deliver() -> None:
        try:
            while not stop.is_set():
                for row in outbox.next_batch(0, 100):
                    recorder.delivered(row)
                    recorder.knows(row.id)
                    recorder.recent()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=deliver)
    t.start()
    try:
        for _ in range(300):
            recorder.record_many([item(), item()])
    finally:
        stop.set()
        t.join(10)
        recorder.close()
        outbox.close()
    assert not errors, errors


@pytest.mark.broker
def test_recorder__held_alarm_is_sent_directly_while_the_outbox_stays_locked(
    tmp_path: Path, broker: Broker, device: str
) -> None:
    """Issue 9 item 6: the uplink sends held events after the outbox rows; one delivered so is never stored."""
    from agent.uplink import Uplink
    from tests.support.mqtt import Central
    from tests.support.uplinkrig import mqtt_cfg

    root = f"campus/main/{device}"
    outbox = Outbox(tmp_path / "outbox.db", site="main", device=device, busy_timeout_s=0.2, intake=False)
    recorder = Recorder(outbox, clock=CLOCK, site="main", device=device, retry_s=0.2)
    central = Central(broker.port, topics=(f"{root}/event/#",))
    uplink = Uplink(
        mqtt_cfg(broker.port, client_id=device),
        topic_root=root,
        outbox=outbox,
        status=lambda: {"v": 1, "state": "online"},
        offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
        on_delivered=recorder.delivered,
        held=recorder.held,
    )
    recorder.hooks.wake = uplink.wake
    lock = WriteLock(tmp_path / "outbox.db").take()
    try:
        uplink.start()
        recorder.record_many([item()])
        held = recorder.recent()[0]
        assert held["on_disk"] is False
        msg = central.wait_for(lambda m: m.topic == f"{root}/event/panic", timeout=20)
        assert (msg.doc["id"], msg.doc["seq"]) == (held["id"], held["seq"])
        eventually(lambda: recorder.held_count() == 0, what="the direct delivery to clear the held event")
        assert recorder.recent()[0]["delivered"] is True
        lock.release()
        recorder.record_many([item()])  # the outbox works again: stored and sent
        nxt = central.wait_for(lambda m: m.topic == f"{root}/event/panic" and m.doc["id"] != held["id"], timeout=20)
        assert nxt.doc["seq"] > held["seq"]
        # The retry thread may have stored it while it was in flight: then the stored copy is deleted.
        eventually(lambda: held["id"] not in stored(outbox), what="no stored copy of a delivered event")
    finally:
        lock.close()
        uplink.stop()
        central.close()
        recorder.close()
        outbox.close()
