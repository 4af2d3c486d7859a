"""The send window on its own: order, alarms first, in-flight limit, pacing, refusals, resets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.sendwindow import (
    REFUSED_ALARM_RETRY_MAX_S,
    REFUSED_ALARM_RETRY_MIN_S,
    REFUSED_RETRY_MIN_S,
    SendWindow,
)
from tests.support.clocks import synced_clock

CLOCK = synced_clock("b")


def alarm() -> Event:
    return Event.create(CLOCK, EventType.PANIC, "panic")


def routine() -> Event:
    return Event.create(CLOCK, EventType.INPUT_FAULT, "panic", data={"reason": "stuck", "active_s": 60})


def practice() -> Event:
    return Event.create(CLOCK, EventType.PANIC, "panic", test=True)


@pytest.fixture
def outbox(outbox: Outbox) -> Outbox:
    """The shared empty outbox with ten routine rows, seq 1..10."""
    for _ in range(10):
        outbox.put(routine())
    return outbox


def send_all(w: SendWindow, now: float, first_mid: int = 1) -> list[int]:
    seqs = []
    for i, row in enumerate(w.take(now)):
        w.sent(first_mid + i, row)
        seqs.append(row.seq)
    return seqs


def test_window__in_order_and_never_more_than_max_inflight(outbox: Outbox) -> None:
    w = SendWindow(outbox, max_inflight=3, rate_per_s=1e6)
    assert send_all(w, 100.0) == [1, 2]  # routine rows leave the last slot to an alarm
    assert w.take(100.0) == []
    assert w.wait_s(100.0, 5.0) == 5.0  # only an ack or a new alarm can help, and both wake the sender
    a = outbox.put(alarm())
    assert send_all(w, 100.001, first_mid=3) == [a]
    assert w.take(100.002) == []  # full
    row, retry = w.settle(1, refused=False, now=100.0)
    assert row is not None
    assert (row.seq, retry) == (1, None)
    assert w.take(100.003) == []  # the free slot is the spare one again
    w.settle(3, refused=False, now=100.0)
    assert send_all(w, 100.004, first_mid=4) == [3]


def test_window__pacing_spreads_a_drain(outbox: Outbox) -> None:
    w = SendWindow(outbox, max_inflight=4, rate_per_s=2.0)
    assert send_all(w, 100.0) == [1, 2, 3]  # the first window goes out as one burst (one slot kept for alarms)
    for mid in (1, 2, 3):
        w.settle(mid, refused=False, now=100.0)
    assert send_all(w, 100.0, first_mid=4) == [4]  # the last token of the burst
    assert w.take(100.0) == []  # the bucket is empty: wait for the next token
    assert w.wait_s(100.0, 5.0) == pytest.approx(0.5)
    assert [r.seq for r in w.take(100.5)] == [5]


def test_window__refused_row_is_retried_later_while_others_flow(outbox: Outbox) -> None:
    w = SendWindow(outbox, max_inflight=3, rate_per_s=1e6)
    assert send_all(w, 100.0) == [1, 2]
    row, retry = w.settle(1, refused=True, now=100.0)
    assert row is not None
    assert row.seq == 1
    assert retry == REFUSED_RETRY_MIN_S
    assert w.settle(2, refused=False, now=100.0)[1] is None
    assert send_all(w, 100.1, first_mid=3) == [3, 4]  # later rows keep flowing
    assert w.settle(3, refused=False, now=100.1)[1] is None
    assert w.settle(4, refused=False, now=100.1)[1] is None
    assert w.wait_s(100.1, 5.0) == pytest.approx(REFUSED_RETRY_MIN_S - 0.1)
    assert send_all(w, 100.0 + REFUSED_RETRY_MIN_S, first_mid=5)[0] == 1  # the refused row, once due
    _, again = w.settle(5, refused=True, now=106.0)
    assert again == 2 * REFUSED_RETRY_MIN_S  # backoff doubles
    assert w.refused_alarms == 0


def test_window__unknown_mid_and_reset(outbox: Outbox) -> None:
    w = SendWindow(outbox, max_inflight=5, rate_per_s=1e6)
    assert w.settle(999, refused=False, now=1.0) == (None, None)
    send_all(w, 1.0)
    assert len(w) == 4
    w.reset()
    assert len(w) == 0
    assert send_all(w, 2.0, first_mid=1) == [1, 2, 3, 4]  # a new connection sends from the oldest again
    assert "inflight=4" in repr(w)


# ---- alarms first ----------------------------------------------------------------------------------


def test_window__a_real_alarm_overtakes_the_backlog(outbox: Outbox) -> None:
    w = SendWindow(outbox, max_inflight=3, rate_per_s=1e6)
    assert send_all(w, 100.0) == [1, 2]
    late = outbox.put(alarm())  # seq 11, behind 8 unsent routine rows
    assert send_all(w, 100.1, first_mid=3) == [late]  # the next publish, at once: no PUBACK awaited
    w.settle(1, refused=False, now=100.1)
    w.settle(3, refused=False, now=100.1)
    assert send_all(w, 100.2, first_mid=4) == [3]  # then the backlog goes on in seq order, without it again


def test_window__alarms_in_seq_order_then_the_rest(outbox: Outbox) -> None:
    a1, t1, a2 = outbox.put(alarm()), outbox.put(practice()), outbox.put(alarm())
    w = SendWindow(outbox, max_inflight=6, rate_per_s=1e6)
    assert send_all(w, 100.0) == [a1, a2, 1, 2, 3]
    assert t1 == 12  # a test press is routine: it keeps its place in seq order
    for mid in range(1, 6):
        w.settle(mid, refused=False, now=100.0)
    outbox.ack([a1, a2, 1, 2, 3])
    assert send_all(w, 100.1, first_mid=6) == [4, 5, 6, 7, 8]
    assert send_all(w, 100.2, first_mid=11) == []  # one slot left: kept for an alarm
    for mid in range(6, 11):
        w.settle(mid, refused=False, now=100.2)
    assert send_all(w, 100.3, first_mid=11) == [9, 10, t1]


def test_window__refused_alarm_retries_soon_and_ahead_of_routine_rows(outbox: Outbox) -> None:
    a = outbox.put(alarm())
    w = SendWindow(outbox, max_inflight=3, rate_per_s=1e6)
    assert send_all(w, 100.0) == [a, 1]
    row, retry = w.settle(1, refused=True, now=100.0)
    assert row is not None
    assert (row.seq, retry) == (a, REFUSED_ALARM_RETRY_MIN_S)
    assert w.refused_alarms == 1
    assert w.wait_s(100.0, 5.0) == pytest.approx(REFUSED_ALARM_RETRY_MIN_S)
    assert send_all(w, 100.5, first_mid=3) == [2]  # routine rows flow meanwhile
    w.settle(2, refused=False, now=100.5)
    w.settle(3, refused=False, now=100.5)
    assert send_all(w, 101.0, first_mid=4) == [a, 3]  # once due, the alarm goes first again
    delays = [w.settle(4, refused=True, now=101.0)[1]]
    for i in range(10):
        now = 200.0 + 100 * i
        assert send_all(w, now, first_mid=10 + i)[0] == a
        delays.append(w.settle(10 + i, refused=True, now=now)[1])
    assert delays[:4] == [2.0, 4.0, 8.0, REFUSED_ALARM_RETRY_MAX_S]  # short, capped: never ten minutes
    assert None not in delays, "a refused alarm is always retried"
    assert max(d for d in delays if d is not None) == REFUSED_ALARM_RETRY_MAX_S


def test_window__refused_routine_row_never_holds_up_an_alarm(outbox: Outbox) -> None:
    w = SendWindow(outbox, max_inflight=1, rate_per_s=1e6)
    assert send_all(w, 100.0) == [1]
    w.settle(1, refused=True, now=100.0)  # routine row 1 waits 5 s
    a = outbox.put(alarm())
    assert send_all(w, 100.0 + REFUSED_RETRY_MIN_S, first_mid=2) == [a]  # its retry is due, the alarm still wins
    w.settle(2, refused=False, now=105.0)
    assert send_all(w, 105.1, first_mid=3) == [1]


def test_window__test_presses_are_not_alarms_for_ordering(tmp_path: Path) -> None:
    with Outbox(tmp_path / "t.db", site="s", device="d") as ob:
        seqs = [ob.put(practice()) for _ in range(3)] + [ob.put(alarm())]
        rows = ob.next_batch(0, 10)
        assert [r.urgent for r in rows] == [False, False, False, True]
        assert [r.alarm for r in rows] == [True] * 4  # still alarms for eviction: never evicted
        w = SendWindow(ob, max_inflight=10, rate_per_s=1e6)
        assert send_all(w, 1.0) == [seqs[3], *seqs[:3]]


def test_window__an_alarm_borrows_one_token_and_a_backlog_of_alarms_is_still_paced(outbox: Outbox) -> None:
    w = SendWindow(outbox, max_inflight=4, rate_per_s=2.0)
    assert send_all(w, 100.0) == [1, 2, 3]
    for mid in (1, 2, 3):
        w.settle(mid, refused=False, now=100.0)
    assert send_all(w, 100.0, first_mid=4) == [4]
    assert w.take(100.0) == []  # routine rows wait for the next token (100.5)
    a1, a2 = outbox.put(alarm()), outbox.put(alarm())
    assert send_all(w, 100.0, first_mid=5) == [a1]  # the alarm goes at once, on the next token
    assert w.take(100.0) == []  # only one token can be borrowed: the second alarm waits
    assert w.wait_s(100.0, 5.0) == pytest.approx(1.0)
    assert send_all(w, 100.5, first_mid=6) == [a2]  # borrowing again, half an interval early
    assert w.take(100.5) == []
    for mid in (4, 5, 6):
        w.settle(mid, refused=False, now=100.5)
    assert w.take(101.4) == []
    assert [r.seq for r in w.take(101.5)] == [5]  # the long-run rate is still 2/s
