"""A row stored below its lane's cursor is still sent on the same connection.

Found by a hunt: an alarm held in memory (the outbox failing) keeps the seq it
was given; a later press (the next seq) is sent by the window, so the alarm
lane's cursor passes it.  When the recorder stores the held alarm at last
(``flush_held``) it leaves ``held()``, so the side lane no longer sends it (nor
retries it after a refusal), and the window only ever read past its cursor:
the alarm waited for the next reconnect, hours on a good link.  The window now
notices pending rows behind its cursors that nothing sends, without reading
SQLite for a press sent from memory and without sending a row in flight twice.
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
