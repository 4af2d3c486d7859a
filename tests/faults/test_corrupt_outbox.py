"""A corrupt outbox at start: moved aside, loudly, and the agent runs.

Kinds of damage:

* garbage: the file is random bytes (SQLite: "file is not a database");
* damaged: a real outbox with pending alarms whose b-tree pages were partly
  overwritten (``quick_check`` fails): what is readable is salvaged and sent,
  and ``seq`` carries on above the highest one the old file had;
* truncated: a real outbox cut to a fraction of its size (full run only).

Each time: the agent starts, logs CRITICAL naming the moved-aside file, the
file is there, agent_started says so, and presses reach the central.
"""

from __future__ import annotations

import contextlib
import random
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.events import Clock, Event, EventType
from agent.outbox import Outbox
from tests.faults.harness import (
    SEED,
    SOAK,
    EventSink,
    MakeAgent,
    describe_missing,
    seq_problems,
    settle,
    wait_connected,
    wait_logged,
)
from tests.support.agentproc import unique_id
from tests.support.broker import Broker
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker

CRITICAL = re.compile(
    r"CRITICAL agent\.outbox: outbox (\S+) was unreadable \((.*?)\); moved it to (\S+), "
    r"salvaged (\d+) events"
)


def _real_outbox(path: Path, device: str, n: int) -> tuple[set[str], int]:
    """An outbox with ``n`` pending panics, as a crashed agent would leave it; returns (ids, top seq)."""
    clock = Clock(synced=lambda: True)
    ids = set()
    with Outbox(path, site="main", device=device) as ob:
        for _ in range(n):
            ev = Event.create(clock, EventType.PANIC, "panic", data={"pin": 17, "contact": "normally_open"})
            ob.put(ev)
            ids.add(ev.id)
        top = ob.stats().last_seq
    return ids, top


def _damage(path: Path, kind: str, rng: random.Random) -> None:
    if kind == "garbage":
        path.write_bytes(rng.randbytes(64 * 1024))
        return
    data = bytearray(path.read_bytes())
    if kind == "damaged":
        page = 4096
        pages = len(data) // page
        # keep page 1 (header and schema) readable, trash a run of pages after it
        first = rng.randrange(2, max(3, pages // 2))
        for p in range(first, min(pages, first + rng.randint(1, 3))):
            data[p * page : (p + 1) * page] = rng.randbytes(page)
        path.write_bytes(bytes(data))
    elif kind == "truncated":
        path.write_bytes(bytes(data[: max(4096, int(len(data) * rng.uniform(0.2, 0.7)))]))
    else:
        raise AssertionError(kind)


def _readable_high_water(path: Path) -> int:
    """The seq high-water mark (sqlite_sequence) if SQLite can still read it from the damaged file, else 0."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            return int(row[0]) if row else 0
    except sqlite3.DatabaseError:
        return 0


def _quick_check_fails(path: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return bool(db.execute("PRAGMA quick_check").fetchone()[0] != "ok")
    except sqlite3.DatabaseError:
        return True


def _one(kind: str, seed: int, broker_port: int, agents: MakeAgent, t0: float) -> None:
    rng = random.Random(f"{SEED}-{kind}-{seed}")
    device = unique_id("rot")
    sink = EventSink(broker_port, device)
    try:
        agent = agents(broker_port, device, start=False)
        outbox = agent.config.parent / "outbox.db"
        old_ids, old_top = _real_outbox(outbox, device, 300) if kind != "garbage" else (set(), 0)
        assert old_top in (0, 300)
        _damage(outbox, kind, rng)
        assert _quick_check_fails(outbox), "the damage went unnoticed by SQLite; pick another page"
        high_water = _readable_high_water(outbox)

        agent.start()
        m = eventually(lambda: CRITICAL.search(agent.log.read_text()), 5, "CRITICAL line about the outbox")
        aside = Path(m[3])
        assert aside.exists(), f"moved-aside file {aside} is not there"
        assert aside.name.startswith("outbox.db.corrupt-")
        assert Path(m[1]) == outbox
        assert outbox.exists()
        salvaged = int(m[4])
        wait_connected(agent)
        for _ in range(5):
            agent.click()
        started = eventually(
            lambda: [d for d in sink.docs.values() if d["type"] == "agent_started"], 10, "agent_started"
        )[0]
        assert started["data"]["outbox_recovered"] == {"moved_aside": str(aside), "salvaged": salvaged}
        recorded = wait_logged(agent, 5)
        eventually(lambda: len(old_ids & sink.ids()) >= salvaged, 10, "salvaged events to be sent")
        floor = max([high_water, *(d["seq"] for i, d in sink.docs.items() if i in old_ids)])
        assert min(r.seq for r in recorded.values() if r.seq is not None) > floor, "seq went back"
        first_new = min(r.seq for r in recorded.values() if r.seq is not None)
        row = settle(
            f"corrupt outbox: {kind}-{seed}",
            t0,
            recorded,
            sink,
            timeout=20,
            note=f"{salvaged} of {len(old_ids)} old events salvaged and sent; old high-water seq "
            f"{old_top} ({'readable' if high_water else 'unreadable'}), new events from seq {first_new}",
        )
        assert row.lost == 0, describe_missing(row, recorded)
        assert not seq_problems(recorded, sink)
        assert len(old_ids & sink.ids()) == salvaged
        assert sink.ids() <= old_ids | set(recorded), "the central got events nobody recorded"
        assert agent.stop() == 0
    finally:
        sink.close()


def _cases() -> Sequence[object]:
    """Short: one garbage file, one damaged outbox.  Full (make soak): more seeds, and truncation."""
    full = (
        [("garbage", s) for s in (1, 2)] + [("damaged", s) for s in range(1, 8)] + [("truncated", s) for s in range(4)]
    )
    slow = (pytest.mark.slow, pytest.mark.skipif(not SOAK, reason="full counts run under make soak (SOAK=1)"))
    return [pytest.param(k, s, id=f"{k}-{s}") for k, s in (("garbage", 0), ("damaged", 0))] + [
        pytest.param(k, s, id=f"{k}-{s}", marks=slow) for k, s in full
    ]


@pytest.mark.parametrize(("kind", "seed"), _cases())
def test_corrupt_outbox__moved_aside_loudly__agent_runs(
    kind: str, seed: int, broker: Broker, agents: MakeAgent
) -> None:
    _one(kind, seed, broker.port, agents, time.monotonic())


def _readable_by_lookup(path: Path, top: int) -> set[int]:
    """Seqs whose row SQLite still returns through a primary-key lookup."""
    ok = set()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for s in range(1, top + 1):
            with contextlib.suppress(sqlite3.DatabaseError):
                if db.execute(
                    "SELECT seq, id, type, alarm, created_ms, body FROM outbox WHERE seq = ?", (s,)
                ).fetchone():
                    ok.add(s)
    return ok


def test_corrupt_outbox__every_readable_row_is_salvaged(broker: Broker, agents: MakeAgent) -> None:
    device = unique_id("salv")
    sink = EventSink(broker.port, device)
    try:
        agent = agents(broker.port, device, start=False)
        outbox = agent.config.parent / "outbox.db"
        _, top = _real_outbox(outbox, device, 300)
        data = bytearray(outbox.read_bytes())
        mid = len(data) // 4096 // 2
        data[mid * 4096 : (mid + 1) * 4096] = random.Random(7).randbytes(4096)
        outbox.write_bytes(bytes(data))
        readable = _readable_by_lookup(outbox, top)
        assert 0 < len(readable) < top, "precondition: a damaged page"
        assert max(readable) == top, "precondition: the damaged page is mid-table, not the last one"

        agent.start()
        m = eventually(lambda: CRITICAL.search(agent.log.read_text()), 5, "CRITICAL line about the outbox")
        assert int(m[4]) == len(readable), (
            f"salvaged {m[4]} events, but {len(readable)} of {top} rows of {m[3]} are readable "
            f"(seq {min(set(range(1, top + 1)) - readable)}-{max(set(range(1, top + 1)) - readable)} are not)"
        )
    finally:
        sink.close()
