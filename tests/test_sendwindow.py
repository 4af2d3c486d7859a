"""The send window on its own: order, in-flight limit, pacing, refusals, resets."""

from __future__ import annotations

import pytest

from agent.events import Clock, Event, EventType
from agent.outbox import Outbox
from agent.sendwindow import REFUSED_RETRY_MIN_S, SendWindow

CLOCK = Clock(synced=lambda: True, boot_id="b")


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "o.db", site="s", device="d")
    for _ in range(10):
        ob.put(Event.create(CLOCK, EventType.PANIC, "panic"))
    yield ob
    ob.close()


def send_all(w: SendWindow, now: float, first_mid: int = 1) -> list[int]:
    seqs = []
    for i, row in enumerate(w.take(now)):
        w.sent(first_mid + i, row)
        seqs.append(row.seq)
    return seqs


def test_window__in_order_and_never_more_than_max_inflight(outbox):
    w = SendWindow(outbox, max_inflight=3, rate_per_s=1e6)
    assert send_all(w, 100.0) == [1, 2, 3]
    assert w.take(100.0) == []
    assert w.wait_s(100.0, 5.0) == 5.0  # full: only an ack can help, and it wakes the sender
    row, retry = w.settle(1, refused=False, now=100.0)
    assert (row.seq, retry) == (1, None)
    assert send_all(w, 100.001, first_mid=4) == [4]


def test_window__pacing_spreads_a_drain(outbox):
    w = SendWindow(outbox, max_inflight=4, rate_per_s=2.0)
    assert send_all(w, 100.0) == [1, 2, 3, 4]  # the first window goes out as one burst
    for mid in (1, 2, 3, 4):
        w.settle(mid, refused=False, now=100.0)
    assert w.take(100.0) == []  # the bucket is empty: wait for the next token
    assert w.wait_s(100.0, 5.0) == pytest.approx(0.5)
    assert [r.seq for r in w.take(100.5)] == [5]


def test_window__refused_row_is_retried_later_while_others_flow(outbox):
    w = SendWindow(outbox, max_inflight=2, rate_per_s=1e6)
    assert send_all(w, 100.0) == [1, 2]
    row, retry = w.settle(1, refused=True, now=100.0)
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


def test_window__unknown_mid_and_reset(outbox):
    w = SendWindow(outbox, max_inflight=5, rate_per_s=1e6)
    assert w.settle(999, refused=False, now=1.0) == (None, None)
    send_all(w, 1.0)
    assert len(w) == 5
    w.reset()
    assert len(w) == 0
    assert send_all(w, 2.0, first_mid=1) == [1, 2, 3, 4, 5]  # a new connection sends from the oldest again
    assert "inflight=5" in repr(w)
