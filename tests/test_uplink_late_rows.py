"""A row stored below its lane's cursor is still sent on the same connection.

Found by a hunt: an alarm held in memory (the outbox failing) keeps the seq it
was given; a later press (the next seq) is sent by the window, so the alarm
lane's cursor passes it.  When the recorder stores the held alarm at last
(``flush_held``) it leaves ``held()``, so the side lane no longer sends it (nor
retries it after a refusal), and the window only ever read past its cursor:
the alarm waited for the next reconnect, hours on a good link.  The window now
notices pending rows behind its cursors that nothing sends, without reading
SQLite for a press sent from memory and without sending a row in flight twice.
A review found that a real alarm stored so waited for the whole routine
backlog (the scan ran only once both lanes had read everything): the alarm
lane now looks behind its cursor whenever it reads short, and a row handed over
(``Uplink.offer``) below its lane's cursor is due at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.events import Event, EventType
from agent.outbox import Outbox, OutboxRow
from agent.sendwindow import SendWindow
from agent.sidelane import SideLane
from agent.uplink import Uplink
from tests.support.clocks import FakeTime, synced_clock
from tests.support.fake5 import Conn, Fake5
from tests.support.uplinkrig import mqtt_cfg
from tests.support.waiting import eventually

CLOCK = synced_clock()
ROOT = "campus/main/gate-1"


def panic() -> Event:
    return Event.create(CLOCK, EventType.PANIC, "panic")


def held_row(outbox: Outbox, event: Event) -> OutboxRow:
    """What the recorder holds when the outbox cannot store ``event``: a row under a reserved seq."""
    return OutboxRow(outbox.reserve_seq(), event.id, "panic", True, 0.0, event.body("main", "gate-1"))


class Wire:
    """A publisher that only records the payloads; message ids count up from 1."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        user: tuple[tuple[str, str], ...] = (),
    ) -> int | None:
        self.sent.append(payload)
        return len(self.sent)


def send_later_press(window: SendWindow, outbox: Outbox, now: float) -> None:
    """A later press is stored, sent and acknowledged: the alarm lane's cursor passes the held seq."""
    later = outbox.put_row(panic())
    window.hand([later])
    assert window.take(now) == [later]
    window.sent(50, later)
    assert window.settle(50, refused=False, now=now) == (later, None)
    outbox.ack([later.seq])


def take_soon(window: SendWindow, now: float) -> list[int]:
    """The seqs the window sends now, or in the round it asks for at once (a wait of 10 ms at most)."""
    rows = window.take(now)
    if not rows:
        assert window.wait_s(now, 10.0) <= 0.01, "the sender is told to come back at once"
        rows = window.take(now)
    return [r.seq for r in rows]


def test_window__an_alarm_stored_below_the_cursor_is_sent_without_a_reconnect(
    outbox: Outbox, fake_time: FakeTime
) -> None:
    alarm = panic()
    held = held_row(outbox, alarm)
    window = SendWindow(outbox, max_inflight=10, rate_per_s=1e6)
    send_later_press(window, outbox, fake_time())
    assert outbox.put(alarm, seq=held.seq) == held.seq  # flush_held: stored under its seq, behind the cursor
    assert take_soon(window, fake_time()) == [held.seq], "sent on this connection, not after the next reconnect"


def test_window__a_held_alarm_in_flight_beside_the_window_is_not_sent_again_once_stored(
    outbox: Outbox, fake_time: FakeTime
) -> None:
    alarm = panic()
    held = held_row(outbox, alarm)
    window = SendWindow(outbox, max_inflight=10, rate_per_s=1e6)
    side = SideLane(ROOT, held=lambda: [held], photos=None, on_delivered=None, window=window, mono=fake_time)
    send_later_press(window, outbox, fake_time())
    wire = Wire()
    side.send_held(wire)  # the held alarm is in flight beside the window
    assert len(wire.sent) == 1
    outbox.put(alarm, seq=held.seq)  # then stored, while its PUBACK is on its way
    for _ in range(3):
        assert window.take(fake_time()) == [], "in flight already: sending it twice helps nobody"
        fake_time.advance(1.0)
    assert side.settle(1, "quota exceeded")  # refused: it left held() when stored, so the window must send it
    assert take_soon(window, fake_time()) == [held.seq]


def test_window__an_alarm_stored_below_the_cursor_overtakes_a_routine_backlog(
    outbox: Outbox, fake_time: FakeTime
) -> None:
    alarm = panic()
    held = held_row(outbox, alarm)
    window = SendWindow(outbox, max_inflight=10, rate_per_s=1e6)
    send_later_press(window, outbox, fake_time())
    for _ in range(300):  # a routine backlog recorded meanwhile
        outbox.put(Event.create(CLOCK, EventType.PANIC, "panic", test=True))
    outbox.put(alarm, seq=held.seq)  # flush_held, with no hand-off
    assert held.seq in [r.seq for r in window.take(fake_time())], "before the routine backlog, not after it"


def test_window__a_routine_row_handed_over_below_its_cursor_is_due_at_once(outbox: Outbox, fake_time: FakeTime) -> None:
    event = Event.create(CLOCK, EventType.INPUT_FAULT, "door")
    held = OutboxRow(outbox.reserve_seq(), event.id, "input_fault", False, 0.0, event.body("main", "gate-1"))
    window = SendWindow(outbox, max_inflight=4, rate_per_s=1e6)
    first = outbox.put_row(Event.create(CLOCK, EventType.INPUT_FAULT, "door"))
    assert window.take(fake_time()) == [first]  # the routine cursor passes the held seq
    window.sent(1, first)
    for _ in range(50):  # a routine backlog behind it
        outbox.put(Event.create(CLOCK, EventType.INPUT_FAULT, "door"))
    stored = outbox.put_row(event, seq=held.seq)
    window.hand([stored])  # the recorder hands over what flush_held stored (Uplink.offer)
    assert window.take(fake_time(), memory_only=True) == [], "a backlog: the sender's work"
    assert window.handed_waiting(), "the sender is woken for it"
    assert [r.seq for r in window.take(fake_time())][:1] == [held.seq]


def test_window__a_late_row_scheduled_then_sent_by_the_side_lane_is_not_sent_twice(
    outbox: Outbox, fake_time: FakeTime
) -> None:
    alarm = panic()
    held = held_row(outbox, alarm)
    window = SendWindow(outbox, max_inflight=10, rate_per_s=1e6)
    side = SideLane(ROOT, held=lambda: [held], photos=None, on_delivered=None, window=window, mono=fake_time)
    send_later_press(window, outbox, fake_time())
    outbox.put(alarm, seq=held.seq)  # stored, still listed in held() for a moment
    window.take(fake_time())  # scheduled; its publish does not happen (the connection is going)
    fake_time.advance(0.1)
    wire = Wire()
    side.send_held(wire)  # the side lane sends it meanwhile
    assert len(wire.sent) == 1
    waits = []
    for _ in range(3):
        assert held.seq not in [r.seq for r in window.take(fake_time())], "in flight beside the window already"
        waits.append(window.wait_s(fake_time(), 10.0))
        fake_time.advance(0.01)
    assert min(waits) > 0.5, f"the sender is told to come back every {min(waits) * 1000:.0f} ms (a review): {waits}"


def test_window__a_press_sent_from_memory_reads_nothing_from_sqlite(
    outbox: Outbox, fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = SendWindow(outbox, max_inflight=10, rate_per_s=1e6)
    window.take(fake_time())  # the connection's first read
    reads: list[int] = []
    real = outbox.next_batch

    def counting(after_seq: int, limit: int, *, urgent: bool | None = None) -> list[OutboxRow]:
        reads.append(after_seq)
        return real(after_seq, limit, urgent=urgent)

    monkeypatch.setattr(outbox, "next_batch", counting)
    for mid in range(1, 6):
        row = outbox.put_row(panic())
        window.hand([row])
        assert window.take(fake_time(), memory_only=True) == [row]
        window.sent(mid, row)
        window.settle(mid, refused=False, now=fake_time())
        outbox.ack([row.seq])
    assert reads == [], "the hand-off publishes a press from memory"


def test_uplink__a_held_alarm_refused_once_then_stored_behind_a_later_press_is_delivered(tmp_path: Path) -> None:
    """End to end, as the recorder does it: held, refused for a moment, a later press delivered, then stored."""
    with Outbox(tmp_path / "ob.db", site="main", device="late") as ob:
        first = panic()
        held = {first.id: held_row(ob, first)}
        later = panic()
        ob.put(later)
        refused: list[int] = []

        def on_publish(c: Conn, pid: int, _topic: str, payload: bytes) -> None:
            if first.id.encode() in payload and not refused:
                refused.append(pid)
                c.puback(pid, 0x97)  # quota exceeded, for a moment
            else:
                c.puback(pid)

        fb = Fake5(on_publish=on_publish)
        delivered: list[str] = []

        def on_delivered(row: OutboxRow) -> None:
            delivered.append(row.id)
            held.pop(row.id, None)

        up = Uplink(
            mqtt_cfg(fb.port, client_id="main/late"),
            topic_root="campus/main/late",
            outbox=ob,
            status=lambda: {"v": 1, "state": "online"},
            offline=lambda r: {"v": 1, "state": "offline", "reason": r},
            on_delivered=on_delivered,
            held=lambda: list(held.values()),
        )
        up.start()
        try:
            eventually(lambda: refused and later.id in delivered, 5.0, "the later press delivered, the first refused")
            assert ob.put(first, seq=held[first.id].seq) == held[first.id].seq  # flush_held
            held.pop(first.id)
            up.wake()
            eventually(lambda: first.id in delivered, 3.0, lambda: f"never sent again; pending={ob.pending()}")
            assert len(fb.conns) == 1, "on the same connection"
        finally:
            up.close()
            fb.close()


def test_window__alarms_delivered_over_a_long_connection_are_not_remembered_for_ever(tmp_path: Path) -> None:
    """The alarms delivered on a connection were kept until a pending alarm showed up: on a link that lasts
    months, every take then read and compared more of them."""
    with Outbox(tmp_path / "outbox.db", site="main", device="gate-1") as ob:
        window = SendWindow(ob, max_inflight=4, rate_per_s=1000.0)
        window.reset()
        for n in range(600):
            send_later_press(window, ob, float(n))
            window.take(float(n) + 0.5)
        assert len(window._alarms_done) <= 256


def test_window__a_routine_backlog_does_not_read_the_alarm_lane_from_zero_every_round(
    outbox: Outbox, fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = SendWindow(outbox, max_inflight=4, rate_per_s=1e6)
    alarm = outbox.put_row(panic())
    assert window.take(fake_time()) == [alarm]
    window.sent(1, alarm)
    window.settle(1, refused=False, now=fake_time())
    outbox.ack([alarm.seq])  # delivered: the alarm lane's cursor is past 0, nothing below it pending
    for _ in range(200):
        outbox.put(Event.create(CLOCK, EventType.PANIC, "panic", test=True))  # a routine backlog
    reads: list[tuple[int, bool]] = []
    real = outbox.next_batch

    def counting(after_seq: int, limit: int, *, urgent: bool | None = None) -> list[OutboxRow]:
        if after_seq == 0 and urgent:
            reads.append((limit, urgent))
        return real(after_seq, limit, urgent=urgent)

    monkeypatch.setattr(outbox, "next_batch", counting)
    mid = 10
    rounds = 0
    while outbox.pending():
        rows = window.take(fake_time())
        rounds += 1
        for r in rows:
            mid += 1
            window.sent(mid, r)
        for m in list(range(mid - len(rows) + 1, mid + 1)):
            row, _ = window.settle(m, refused=False, now=fake_time())
            assert row is not None
            outbox.ack([row.seq])
        fake_time.advance(0.01)
    assert len(reads) <= 1, f"{len(reads)} reads of the alarm lane from seq 0 in {rounds} rounds, none stored late"
