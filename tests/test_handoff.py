"""The hand-off: rows handed in from the commit are published from memory, exactly as a read would pick them.

Two windows run side by side on one outbox, one told about every commit
(:meth:`SendWindow.hand`, sometimes late, as from another thread) and one
that always reads SQLite; every take must choose the same rows in the same
order (alarms first, pacing, the window), through backlogs, refusals, retries
and reconnects.  The handed window must also have skipped reads, or the test
would prove nothing.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from agent.config import load_config
from agent.events import Event, EventType
from agent.outbox import Outbox, OutboxRow
from agent.sendwindow import SendWindow
from agent.uplink import Uplink
from tests.support.agentproc import write_config
from tests.support.clocks import synced_clock

if TYPE_CHECKING:
    from agent.session import Session

CLOCK = synced_clock("b")


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
def test_handoff__takes_what_a_read_would_take(tmp_path: Path, seed: int) -> None:
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
                    assert row is not None
                    handed.sent(mid, row)
                    plain.sent(mid, row)
                    inflight.append(mid)
            elif op < 0.95 and inflight:
                m = inflight.pop(rng.randrange(len(inflight)))
                refused = _step < 200 and rng.random() < 0.08  # then retries die out
                a, _ = handed.settle(m, refused=refused, now=now)
                b, _ = plain.settle(m, refused=refused, now=now)
                assert a == b
                assert a is not None
                if not refused:
                    ob.ack([a.seq])
            elif op >= 0.98:  # a reconnect: everything is sent again
                handed.reset()
                plain.reset()
                inflight.clear()
        assert reads_saved > 0, "the hand-off was never used"
    finally:
        ob.close()


class _Link:
    """The session as the uplink's event sender uses it: publish returns a mid; the link stays up."""

    def __init__(self) -> None:
        self.lost = threading.Event()
        self.sent: list[int] = []

    def publish(self, topic: str, payload: bytes, **_kw: object) -> int:
        self.sent.append(json.loads(payload)["seq"])
        return len(self.sent)

    def writing(self) -> contextlib.nullcontext[None]:
        """As agent.session.Session.writing; the fake sends at publish."""
        return contextlib.nullcontext()


def _as_session(link: _Link) -> Session:
    """The fake plays the part of ``agent.session.Session`` the event sender uses: publish and writing."""
    return cast("Session", link)


@pytest.fixture
def uplink(tmp_path: Path, outbox: Outbox) -> tuple[Uplink, Outbox, _Link]:
    cfg = load_config(write_config(tmp_path, 1, device="d", mqtt={"max_inflight": 3})).mqtt
    up = Uplink(cfg, topic_root="campus/s/d", outbox=outbox, status=dict, offline=lambda r: {"reason": r})
    link = _Link()
    up._events.live = _as_session(link)  # as the sender's _serve does once the broker accepted the session
    return up, outbox, link


def test_offer__publishes_a_fresh_press_from_the_committing_thread(uplink: tuple[Uplink, Outbox, _Link]) -> None:
    up, ob, link = uplink
    rows = ob.put_rows([Event.create(CLOCK, EventType.PANIC, "panic")])
    up.offer(rows)
    assert link.sent == [rows[0].seq]  # no sender round ran
    assert not up._wake.is_set()  # nothing left for the sender: its PUBACK wakes it


def test_offer__leaves_a_backlog_and_the_alarm_lane_to_the_sender(uplink: tuple[Uplink, Outbox, _Link]) -> None:
    up, ob, link = uplink
    backlog = ob.put(Event.create(CLOCK, EventType.INPUT_FAULT, "panic", data={"reason": "stuck", "active_s": 1}))
    up.offer(ob.put_rows([Event.create(CLOCK, EventType.PANIC, "panic")]))
    assert link.sent == []  # a backlog: not the whole picture in memory, the sender reads the outbox
    assert up._wake.is_set()
    up._wake.clear()
    unhanded_alarm = ob.put(Event.create(CLOCK, EventType.TAMPER, "tamper"))
    up._events.fill(_as_session(link), up._mono())  # the sender's round reads the outbox: alarms first, in seq order
    assert link.sent == [2, unhanded_alarm]  # the backlog's routine row leaves the last slot to an alarm
    assert ob.get(backlog) is not None


def test_offer__never_waits_for_the_sender(uplink: tuple[Uplink, Outbox, _Link]) -> None:
    up, ob, link = uplink
    with up._events.lock:  # the sender's round is running
        up.offer(ob.put_rows([Event.create(CLOCK, EventType.PANIC, "panic")]))
    assert link.sent == []
    assert up._wake.is_set()  # the round after this one sends it
    up._events.fill(_as_session(link), up._mono())
    assert link.sent == [1]
