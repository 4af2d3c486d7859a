"""Events held in memory go out like the send window's rows: real alarms first, the rest bounded and paced.

The recorder holds events while the outbox cannot store them (agent/recorder.py);
the sender publishes them directly (agent/sidelane.py).  They used to go in
``seq`` order, all at once: a panic held behind 40 camera faults arrived 41st,
and 10,000 held events went out in one burst.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pytest

from agent.events import Event, EventType
from agent.outbox import Outbox, OutboxRow
from agent.recorder import Recorder
from agent.sendwindow import SendWindow
from agent.sidelane import SideLane
from agent.uplink import Uplink
from tests.support.broker import Broker
from tests.support.clocks import FakeTime, synced_clock
from tests.support.mqtt import Central
from tests.support.uplinkrig import mqtt_cfg
from tests.support.waiting import eventually

CLOCK = synced_clock()
ROOT = "campus/main/gate-1"


class Held:
    """What the recorder hands the sender: held rows in seq order; a delivered one is forgotten."""

    def __init__(self) -> None:
        self.rows: dict[str, OutboxRow] = {}
        self.by_payload: dict[bytes, OutboxRow] = {}

    def add(self, event: Event) -> OutboxRow:
        seq = len(self.by_payload) + 1
        row = OutboxRow(seq, event.id, event.type.value, event.type.is_alarm, 0.0, event.body("main", "gate-1"))
        self.rows[event.id] = row
        self.by_payload[row.payload] = row
        return row

    def __call__(self) -> list[OutboxRow]:
        return list(self.rows.values())

    def delivered(self, row: OutboxRow) -> None:
        self.rows.pop(row.id, None)


class Wire:
    """A publisher that only records: message ids count up from 1, ``sent[mid - 1]`` is the row sent."""

    def __init__(self, held: Held) -> None:
        self.held = held
        self.sent: list[OutboxRow] = []

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        user: tuple[tuple[str, str], ...] = (),
    ) -> int | None:
        assert topic.startswith(f"{ROOT}/event/")
        self.sent.append(self.held.by_payload[payload])
        return len(self.sent)


def camera() -> Event:
    return Event.create(CLOCK, EventType.CAMERA_FAULT, "cam", data={"detail": "no answer"})


def panic(*, test: bool = False) -> Event:
    return Event.create(CLOCK, EventType.PANIC, "panic", test=test)


@pytest.fixture
def held() -> Held:
    return Held()


@pytest.fixture
def wire(held: Held) -> Wire:
    return Wire(held)


def lane(window: SendWindow, held: Held, mono: FakeTime) -> SideLane:
    return SideLane(ROOT, held=held, photos=None, on_delivered=held.delivered, window=window, mono=mono)


def ack(side: SideLane, mids: Iterable[int]) -> None:
    for mid in mids:
        assert side.settle(mid, None)


def test_held__a_real_alarm_goes_first_and_routine_events_leave_the_last_slot_free(
    outbox: Outbox, held: Held, wire: Wire, fake_time: FakeTime
) -> None:
    for _ in range(40):
        held.add(camera())
    practice = held.add(panic(test=True))  # a test press is routine: seq order, after the faults
    alarm = held.add(panic())
    side = lane(SendWindow(outbox, max_inflight=10, rate_per_s=1e6), held, fake_time)

    side.send_held(wire)
    assert wire.sent[0] == alarm, "the real alarm is the first message, not the 42nd"
    assert [r.seq for r in wire.sent[1:]] == list(range(1, 9)), "routine: seq order, 8 of 10 slots (one spare)"
    fake_time.advance(1.0)  # the pace is no limit here
    side.send_held(wire)
    assert len(wire.sent) == 9, "nothing more until a PUBACK frees a slot"

    ack(side, [1, 2, 3])  # the alarm and two faults
    fake_time.advance(1.0)
    side.send_held(wire)
    assert [r.seq for r in wire.sent[9:]] == [9, 10, 11], "routine events in flight: 9 of 10 at most"
    for _ in range(40):  # the rest drains, one PUBACK at a time
        if len(wire.sent) == 42:
            break
        ack(side, [len(wire.sent)])
        fake_time.advance(1.0)
        side.send_held(wire)
        assert len(side._inflight) == 9
    assert wire.sent[-1] == practice
    assert len({r.id for r in wire.sent}) == 42, "each held event published once"


def test_held__the_send_windows_own_rows_count_against_the_same_slots(
    outbox: Outbox, held: Held, wire: Wire, fake_time: FakeTime
) -> None:
    for _ in range(5):
        outbox.put(camera())
    window = SendWindow(outbox, max_inflight=10, rate_per_s=1e6)
    for mid, row in enumerate(window.take(fake_time()), start=100):
        window.sent(mid, row)
    assert len(window) == 5
    for _ in range(20):
        held.add(camera())
    alarm = held.add(panic())
    side = lane(window, held, fake_time)

    side.send_held(wire)
    assert wire.sent[0] == alarm
    assert len(wire.sent) == 1 + 3, "5 outbox rows and 4 held events in flight: the tenth slot stays free"


def test_held__routine_events_are_paced_at_the_window_rate_but_an_alarm_never_waits(
    outbox: Outbox, held: Held, wire: Wire, fake_time: FakeTime
) -> None:
    for _ in range(20):
        held.add(camera())
    side = lane(SendWindow(outbox, max_inflight=5, rate_per_s=10.0), held, fake_time)

    assert side.send_held(wire) == float("inf")  # a burst of one window: 4 (the fifth slot is spare)
    assert len(wire.sent) == 4
    ack(side, [1, 2, 3, 4])
    wait = side.send_held(wire)
    assert len(wire.sent) == 5, "the fifth token of the burst"
    assert wait == pytest.approx(0.1), "the next one is due at the window's rate"
    assert side.send_held(wire) == pytest.approx(0.1)
    assert len(wire.sent) == 5

    alarm = held.add(panic())
    assert side.send_held(wire) == pytest.approx(0.2), "the alarm took the next token"
    assert wire.sent[-1] == alarm, "an alarm is never paced"

    fake_time.advance(0.1)
    assert side.send_held(wire) == pytest.approx(0.1)
    assert len(wire.sent) == 6
    fake_time.advance(10.0)
    ack(side, [5, 6])
    side.send_held(wire)
    assert len(wire.sent) == 6 + 4, "after a pause the burst is one window again"


@pytest.mark.broker
def test_held__a_real_alarm_held_behind_routine_events_is_published_first(
    tmp_path: Path, broker: Broker, device: str
) -> None:
    root = f"campus/main/{device}"
    outbox = Outbox(tmp_path / "outbox.db", site="main", device=device, busy_timeout_s=0.2, intake=False)
    recorder = Recorder(outbox, clock=CLOCK, site="main", device=device, retry_s=0.5)
    lock = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None, timeout=10)
    lock.execute("BEGIN IMMEDIATE")  # the outbox cannot write: everything is held in memory
    central = Central(broker.port, topics=(f"{root}/event/#",))
    uplink = Uplink(
        mqtt_cfg(broker.port, client_id=device, max_inflight=10),
        topic_root=root,
        outbox=outbox,
        status=lambda: {"v": 1, "state": "online"},
        offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
        on_delivered=recorder.delivered,
        held=recorder.held,
    )
    recorder.hooks.wake = uplink.wake
    try:
        for i in range(40):  # a flapping camera while the outbox is unusable
            recorder.record(EventType.CAMERA_FAULT, f"cam{i}", CLOCK.stamp(), {})
        recorder.record(EventType.PANIC, "panic", CLOCK.stamp(), {"pin": 17, "contact": "normally_open"})
        assert recorder.held_count() == 41
        uplink.start()
        eventually(lambda: len(central.events()) >= 41, timeout=20, what="all held events published")
        order = [e["type"] for e in central.events()]
        assert order.index("panic") == 0, f"the real alarm arrived after {order.index('panic')} routine events"
        eventually(lambda: recorder.held_count() == 0, timeout=20, what="every held event acknowledged")
    finally:
        uplink.stop()
        central.close()
        lock.execute("ROLLBACK")
        lock.close()
        recorder.close()
        outbox.close()


def test_held__a_refused_held_alarm_is_sent_again_on_the_same_connection(
    outbox: Outbox, held: Held, wire: Wire, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    """It used to wait for the next connection, which a link that stays up never brings."""
    alarm = held.add(panic())
    side = lane(SendWindow(outbox, max_inflight=10, rate_per_s=1e6), held, fake_time)
    side.send_held(wire)
    assert side.settle(1, "quota exceeded")
    assert "broker refused panic event seq 1 (quota exceeded); kept in memory (held)" in caplog.text
    assert side.refused == 1

    assert side.send_held(wire) == pytest.approx(1.0), "an alarm's first retry is due in 1 s"
    assert len(wire.sent) == 1, "not again at once: the broker just refused it"
    fake_time.advance(1.0)
    side.send_held(wire)
    assert wire.sent == [alarm, alarm], "sent again on the same connection"
    assert side.settle(2, "quota exceeded")
    assert side.send_held(wire) == pytest.approx(2.0), "the retries back off"
    fake_time.advance(2.0)
    side.send_held(wire)
    ack(side, [3])
    assert held() == [], "delivered at last"


def test_held__held_events_in_flight_take_the_send_windows_slots(
    outbox: Outbox, held: Held, wire: Wire, fake_time: FakeTime
) -> None:
    """The window used to fill every slot beside them: twice ``max_inflight`` (and a Receive Maximum) exceeded."""
    for _ in range(4):
        held.add(camera())
    window = SendWindow(outbox, max_inflight=5, rate_per_s=1e6)
    side = lane(window, held, fake_time)
    side.send_held(wire)
    assert len(wire.sent) == 4
    for _ in range(5):
        outbox.put(camera())
    assert window.take(fake_time()) == [], "routine rows leave the fifth slot to an alarm"
    outbox.put(panic())
    rows = window.take(fake_time())
    assert [r.type for r in rows] == ["panic"], "one slot left, and an alarm takes it"
    window.sent(100, rows[0])
    ack(side, [1, 2])
    fake_time.advance(1.0)
    assert len(window.take(fake_time())) == 1, "two PUBACKs free two slots; the last stays for an alarm"


def test_held__a_held_event_waiting_for_its_puback_is_seen_by_the_overdue_check(
    outbox: Outbox, held: Held, wire: Wire, fake_time: FakeTime
) -> None:
    """The sender ends a session whose broker keeps an event without a PUBACK; held events count too."""
    alarm = held.add(panic())
    side = lane(SendWindow(outbox, max_inflight=10, rate_per_s=1e6), held, fake_time)
    assert side.oldest(fake_time()) is None
    side.send_held(wire)
    fake_time.advance(12.0)
    oldest = side.oldest(fake_time())
    assert oldest is not None
    assert oldest[0] == pytest.approx(12.0)
    assert oldest[1] == alarm
    side.reset()
    assert side.oldest(fake_time()) is None


def test_held__the_window_counts_held_events_in_flight_after_a_paced_return(
    outbox: Outbox, held: Held, wire: Wire, fake_time: FakeTime
) -> None:
    """A return on the pace skipped the count: the window then handed out slots held events had taken."""
    for _ in range(5):
        held.add(camera())
    window = SendWindow(outbox, max_inflight=4, rate_per_s=1.0)
    side = lane(window, held, fake_time)
    side.send_held(wire)  # three routine ones (a slot spare): the bucket is used up
    ack(side, [1, 2, 3])
    held.add(panic())
    side.send_held(wire)  # the panic (never paced), then the next routine one waits for the pace
    in_flight = len(wire.sent) - 3
    assert window.beside == in_flight >= 1
    for _ in range(4):
        outbox.put(panic())
    assert len(window.take(fake_time())) + in_flight <= window.max_inflight
