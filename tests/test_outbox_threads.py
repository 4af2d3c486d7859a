"""seq under threads: alarms into the intake, camera faults into SQLite, seqs reserved for held events, acks.

The threads the daemon really has touch the outbox at once: the inputs thread
(alarms), camera workers (faults), the recorder's retry thread (held events
stored with the seq ``reserve_seq`` gave them) and the sender (acks).  A seq
given twice makes a held event unstorable and two events look alike to a
central; a race once did exactly that (test_outbox, the reserved seq during a
commit).  Bounded: a fixed number of operations per thread, joined with a
timeout.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.events import Event, EventType
from agent.outbox import Outbox
from tests.support.clocks import synced_clock
from tests.support.outboxfile import pending

CLOCK = synced_clock()
OPS = 60


@pytest.mark.parametrize("intake", [True, False])
def test_outbox_threads__every_event_stored_once_under_its_own_seq(tmp_path: Path, intake: bool) -> None:
    path = tmp_path / "outbox.db"
    stored: dict[str, int] = {}  # id -> seq the outbox returned
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    with Outbox(path, site="s", device="d", intake=intake) as ob:

        def note(e: Event, seq: int) -> None:
            with lock:
                assert e.id not in stored
                stored[e.id] = seq

        def run(work: Callable[[], None]) -> None:
            try:
                start.wait(10)
                work()
            except BaseException as exc:  # reported below
                errors.append(exc)

        def alarms() -> None:
            for i in range(OPS):
                batch = [Event.create(CLOCK, EventType.PANIC, "panic") for _ in range(1 + i % 3)]
                for e, seq in zip(batch, ob.put_many(batch), strict=True):
                    note(e, seq)

        def faults() -> None:
            for _ in range(OPS):
                e = Event.create(CLOCK, EventType.CAMERA_FAULT, "cam", data={"reason": "timeout"})
                note(e, ob.put(e))

        def held() -> None:
            for _ in range(OPS):
                e = Event.create(CLOCK, EventType.TAMPER, "lid")
                seq = ob.reserve_seq()
                note(e, ob.put(e, seq=seq))

        def acks() -> None:
            rng = random.Random(7)
            for _ in range(OPS):
                rows = ob.next_batch(0, 5)
                ob.ack([r.seq for r in rows if rng.random() < 0.5])

        threads = [threading.Thread(target=run, args=(w,)) for w in (alarms, faults, held, acks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a thread is stuck"
        assert not errors, errors
        seqs = sorted(stored.values())
        assert len(set(seqs)) == len(seqs), "a seq was given to two events"
        assert ob.top_seq() == seqs[-1], "the counter ends at the highest seq given"
        left = {r.id: r.seq for r in ob.next_batch(0, 10_000)}
        assert all(stored[i] == s for i, s in left.items()), "a pending row's seq is not the one put returned"
    on_disk = pending(path)
    assert {i: s for i, (s, _t) in on_disk.items()} == left, "after close, the files hold what was pending"
    with Outbox(path, site="s", device="d", intake=intake) as again:
        assert again.top_seq() >= seqs[-1], "seq never goes back across a restart"
