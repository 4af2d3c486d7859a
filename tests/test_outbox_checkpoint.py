"""The WAL is checkpointed by the acks, not inside a press's commit; offline, the puts' backstop bounds it.

Real SQLite files.  A checkpoint inside a put's COMMIT costs that press more
fsyncs; here the puts' own threshold (``PUT_CHECKPOINT_PAGES``) is far above
what the acks let the WAL reach, so while acks flow the WAL stays small and
no put ever restarts it.  The outboxes commit every put to SQLite
(``intake=False``): with the intake, puts that are acknowledged never reach
the WAL at all.
"""

from __future__ import annotations

from pathlib import Path

from agent.events import Clock, Event, EventType
from agent.outbox import Outbox
from agent.outbox_acks import ACK_CHECKPOINT_COMMITS, PUT_CHECKPOINT_PAGES


def _event(clock: Clock) -> Event:
    return Event.create(clock, EventType.PANIC, "panic", data={"pin": 17, "contact": "normally_open"})


def _wal_pages(ob: Outbox) -> int:
    """Frames in the WAL now (a passive checkpoint with nothing to copy reports the log's size)."""
    busy, log_frames, _done = ob._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0
    return int(log_frames)


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_checkpoint__puts_alone_do_not_checkpoint_below_their_backstop(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "outbox.db"
    with Outbox(path, site="main", device="d", intake=False) as ob:
        page = int(ob._conn.execute("PRAGMA page_size").fetchone()[0])
        for _ in range(60):  # about 240 pages: past the old 100-page autocheckpoint, below the backstop
            ob.put(_event(clock))
        size = _wal_bytes(path)
        assert size > 150 * page, f"the WAL was restarted by a put ({size} bytes)"
        assert size < PUT_CHECKPOINT_PAGES * page * 1.2


def test_checkpoint__the_backstop_bounds_the_wal_while_nothing_is_acknowledged(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "outbox.db"
    with Outbox(path, site="main", device="d", intake=False) as ob:
        page = int(ob._conn.execute("PRAGMA page_size").fetchone()[0])
        for _ in range(300):  # about 1,200 pages of commits
            ob.put(_event(clock))
        assert _wal_bytes(path) < (PUT_CHECKPOINT_PAGES + 20) * page
        assert ob.pending() == 300


def test_checkpoint__acks_keep_the_wal_small_and_lose_nothing(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "outbox.db"
    with Outbox(path, site="main", device="d", intake=False) as ob:
        page = int(ob._conn.execute("PRAGMA page_size").fetchone()[0])
        kept = []
        for i in range(200):
            seq = ob.put(_event(clock))
            if i % 2:
                ob.ack([seq])
            else:
                kept.append(seq)
        # a checkpoint every ACK_CHECKPOINT_COMMITS commits of a few pages each: far below the backstop
        assert _wal_bytes(path) < ACK_CHECKPOINT_COMMITS * 8 * page
        assert _wal_pages(ob) < ACK_CHECKPOINT_COMMITS * 8
        assert [r.seq for r in ob.next_batch(0, 1000)] == kept
    with Outbox(path, site="main", device="d", intake=False) as again:
        assert [r.seq for r in again.next_batch(0, 1000)] == kept
