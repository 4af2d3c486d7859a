"""The hand-off: rows handed in from the commit are published from memory, exactly as a read would pick them.

Two windows run side by side on one outbox, one told about every commit
(:meth:`SendWindow.hand`, sometimes late, as from another thread) and one
that always reads SQLite; every take must choose the same rows in the same
order (alarms first, pacing, the window), through backlogs, refusals, retries
and reconnects.  The handed window must also have skipped reads, or the test
would prove nothing.
"""

from __future__ import annotations

import random

import pytest

from agent.events import Clock, Event, EventType
from agent.outbox import Outbox, OutboxRow
from agent.sendwindow import SendWindow

CLOCK = Clock(synced=lambda: True, boot_id="b")


def _event(rng: random.Random) -> Event:
    kind = rng.random()
    if kind < 0.4:
        return Event.create(CLOCK, EventType.PANIC, "panic")
    if kind < 0.5:
        return Event.create(CLOCK, EventType.PANIC, "panic", test=True)
    return Event.create(CLOCK, EventType.INPUT_FAULT, "panic", data={"reason": "stuck", "active_s": 60})


class _CountingOutbox(Outbox):
    reads = 0

    def next_batch(self, after_seq: int, limit: int, *, urgent: bool | None = None) -> list[OutboxRow]:
        type(self).reads += 1
        return super().next_batch(after_seq, limit, urgent=urgent)


@pytest.mark.parametrize("seed", range(12))
def test_handoff__takes_what_a_read_would_take(tmp_path, seed):
    rng = random.Random(seed)
    ob = _CountingOutbox(tmp_path / "o.db", site="s", device="d")
    for _ in range(rng.randrange(0, 4)):  # a backlog from before the connection
        ob.put(_event(rng))
    handed = SendWindow(ob, max_inflight=4, rate_per_s=rng.choice([5.0, 1e6]))
    plain = SendWindow(ob, max_inflight=4, rate_per_s=handed.rate)
    late: list[OutboxRow] = []  # committed, hand-off still on its way
    inflight: list[int] = []
    now, mid = 100.0, 0
    reads_saved = 0
    try:
        for _step in range(500):
            now += rng.choice([0.0, 0.01, 0.3])
            op = rng.random()
            if op < (0.2 if _step < 250 else 0.04):  # then the backlog drains
                rows = ob.put_rows([_event(rng) for _ in range(rng.choice([1, 1, 2]))])
                if rng.random() < 0.2:
                    late += rows
                else:
                    handed.hand(rows)
            elif op < 0.25 and late:
                handed.hand(late)
                late = []
            elif op < 0.6:
                before = ob.reads
                got = [r.seq for r in handed.take(now)]
                middle = ob.reads
                want = [r.seq for r in plain.take(now)]
                assert got == want, f"step {_step}: handed {got}, read {want}"
                reads_saved += (ob.reads - middle) - (middle - before)
                for seq in want:
                    mid += 1
                    row = ob.get(seq)
                    handed.sent(mid, row)
                    plain.sent(mid, row)
                    inflight.append(mid)
            elif op < 0.95 and inflight:
                m = inflight.pop(rng.randrange(len(inflight)))
                refused = _step < 200 and rng.random() < 0.08  # then retries die out
                a, _ = handed.settle(m, refused=refused, now=now)
                b, _ = plain.settle(m, refused=refused, now=now)
                assert a == b
                if not refused:
                    ob.ack([a.seq])
            elif op >= 0.98:  # a reconnect: everything is sent again
                handed.reset()
                plain.reset()
                inflight.clear()
        assert reads_saved > 0, "the hand-off was never used"
    finally:
        ob.close()
