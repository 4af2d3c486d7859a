"""The SQLite outbox: durability settings, seq, FIFO, acks, eviction, recovery."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.errors import OutboxError, OutboxFullError
from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.outbox_space import NON_ALARM_SHARE
from tests.support.clocks import synced_clock
from tests.support.outboxfile import intake_live, pending

CLOCK = synced_clock()


def ev(kind: EventType = EventType.PANIC, source: str = "panic", **data: object) -> Event:
    return Event.create(CLOCK, kind, source, data=data)


def test_outbox__wal_and_full_sync(outbox: Outbox) -> None:
    conn = outbox._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: survives power loss


def test_outbox__put_is_durable_before_it_returns(outbox: Outbox, tmp_path: Path) -> None:
    e = ev()
    seq = outbox.put(e)
    assert intake_live(tmp_path / "outbox.db") == {e.id: (seq, "panic")}, "in the intake, synced"
    assert pending(tmp_path / "outbox.db") == {e.id: (seq, "panic")}


def test_outbox__without_the_intake_put_is_committed_before_it_returns(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", site="s", device="d", intake=False) as ob:
        e = ev()
        seq = ob.put(e)
        other = sqlite3.connect(tmp_path / "outbox.db")  # a second connection sees only committed rows
        assert other.execute("SELECT id FROM outbox WHERE seq = ?", (seq,)).fetchone() == (e.id,)
        other.close()
        assert not (tmp_path / "outbox.db.intake").exists()


def test_outbox__payload_is_the_contract_document(outbox: Outbox) -> None:
    e = ev(pin=17)
    seq = outbox.put(e)
    row = outbox.next_batch(0, 10)[0]
    doc = json.loads(row.payload)
    assert doc["v"] == 1
    assert doc["seq"] == seq
    assert doc["id"] == e.id
    assert doc["site"] == "main"
    assert doc["device"] == "gate-1"
    assert doc["data"] == {"pin": 17}


def test_outbox__fifo_and_ack_deletes_only_acked(outbox: Outbox) -> None:
    seqs = [outbox.put(ev()) for _ in range(5)]
    assert seqs == sorted(seqs)
    assert [r.seq for r in outbox.next_batch(0, 3)] == seqs[:3]
    assert [r.seq for r in outbox.next_batch(seqs[2], 10)] == seqs[3:]
    assert outbox.ack([seqs[1], seqs[3]]) == 2
    assert [r.seq for r in outbox.next_batch(0, 10)] == [seqs[0], seqs[2], seqs[4]]
    assert outbox.pending() == 3
    assert outbox.ack([seqs[1]]) == 0  # a duplicate PUBACK changes nothing
    assert outbox.pending() == 3


def test_outbox__seq_keeps_growing_across_reopen_even_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, site="s", device="d") as ob:
        last = [ob.put(ev()) for _ in range(3)][-1]
        ob.ack(range(1, last + 1))
        assert ob.pending() == 0
    with Outbox(path, site="s", device="d") as ob:
        assert ob.put(ev()) == last + 1
        assert ob.recovery.moved_aside is None


def test_outbox__stats(outbox: Outbox) -> None:
    assert outbox.stats().oldest_age_s is None
    outbox.put(ev())
    st = outbox.stats()
    assert st.pending == 1
    assert st.oldest_age_s is not None
    assert st.oldest_age_s >= 0
    assert st.dropped == 0
    assert st.last_seq == 1


def test_outbox__eviction_drops_oldest_non_alarms_never_panic(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox(tmp_path / "o.db", site="s", device="d", max_mb=1)
    panics = [ob.put(ev()) for _ in range(50)]
    blob = "x" * 2000
    with caplog.at_level(logging.WARNING):
        for _ in range(1500):  # far more than 1 MiB of camera events
            ob.put(ev(EventType.CAMERA_FAULT, "cam", detail=blob))
    st = ob.stats()
    assert st.dropped > 0
    assert "evicted" in caplog.text
    remaining = {r.seq for r in ob.next_batch(0, 100_000)}
    assert set(panics) <= remaining, "a panic event was evicted"
    assert st.db_bytes <= st.cap_bytes
    # the reserve above the non-alarm share still takes alarms
    more = [ob.put(ev()) for _ in range(100)]
    assert set(more) <= {r.seq for r in ob.next_batch(0, 100_000)}
    # the oldest non-alarm rows went first: the survivors are the newest ones
    cams = [r.seq for r in ob.next_batch(0, 100_000) if r.type == "camera_fault"]
    assert cams == sorted(cams)
    assert cams[-1] == max(remaining)
    dropped = ob.stats().dropped
    ob.close()
    with Outbox(tmp_path / "o.db", site="s", device="d", max_mb=1) as again:
        assert again.stats().dropped == dropped  # the count survives restarts


def test_outbox__full_of_alarms_refuses_clearly(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", site="s", device="d", max_mb=1)
    big = "y" * 3000
    with pytest.raises(OutboxFullError, match="all alarms"):
        for _ in range(2000):
            ob.put(ev(note=big))
    assert ob.stats().db_bytes <= ob.stats().cap_bytes
    ob.close()


def test_outbox__non_alarm_share_leaves_room_for_alarms(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", site="s", device="d", max_mb=1)
    for _ in range(1500):
        ob.put(ev(EventType.CAMERA_FAULT, "cam", detail="z" * 2000))
    pages, free = ob._page_counts()
    assert (pages - free) <= ob._allowed_pages * NON_ALARM_SHARE + 64
    ob.close()


def test_outbox__low_disk_caps_below_free_space(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a headroom larger than the free space simulates a nearly full filesystem
    with caplog.at_level(logging.ERROR):
        ob = Outbox(tmp_path / "o.db", site="s", device="d", headroom_bytes=1 << 60)
    assert ob.stats().disk_low
    assert "nearly full" in caplog.text
    ob.put(ev())  # the file's existing pages still take an alarm
    ob.close()


def test_outbox__corrupt_file_is_moved_aside_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.CRITICAL):
        ob = Outbox(path, site="s", device="d")
    assert ob.recovery.moved_aside is not None
    assert ob.recovery.moved_aside.exists()
    assert ob.recovery.moved_aside.read_bytes().startswith(b"this is not a database")
    assert "unreadable" in caplog.text
    assert ob.put(ev()) == 1
    ob.close()


def test_outbox__a_damaged_page_is_reported_on_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """quick_check's report spans lines ("*** in database main ***", then the page): journald wants one line."""
    path = tmp_path / "outbox.db"
    with Outbox(path, site="s", device="d", intake=False) as ob:
        for _ in range(300):
            ob.put(ev())
    data = bytearray(path.read_bytes())
    data[6 * 4096 : 7 * 4096] = b"\x07" * 4096  # page 7, a b-tree page: "btreeInitPage() returns error code 11"
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.CRITICAL), Outbox(path, site="s", device="d") as again:
        assert again.recovery.moved_aside is not None
        assert again.recovery.reason is not None
        assert "\n" not in again.recovery.reason
    [line] = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert "\n" not in line
    assert "*** in database main *** Page 7" in line


def test_outbox__damaged_file_is_salvaged_and_seq_continues(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, site="s", device="d") as ob:
        ids = [ob.put(ev()) for _ in range(200)]
    data = bytearray(path.read_bytes())
    page = 4096
    # wreck the last page (leaf rows of the newest events) but keep the header and schema
    data[-page:] = b"\xff" * page
    path.write_bytes(bytes(data))
    with Outbox(path, site="s", device="d") as ob:
        assert ob.recovery.moved_aside is not None
        assert 150 < ob.recovery.salvaged < len(ids), "readable rows must be salvaged, the wrecked page not"
        survivors = [r.seq for r in ob.next_batch(0, 1000)]
        assert survivors == sorted(survivors)
        assert set(survivors) <= set(ids)
        assert ob.put(ev()) == max(ids) + 1, "seq must stay strictly increasing after recovery"


def test_outbox__closed_repr_and_idempotent_close(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", site="s", device="d")
    assert "pending=0" in repr(ob)
    ob.close()
    ob.close()
    assert "closed" in repr(ob)


def test_outbox__unreadable_file_resumes_seq_above_the_floor(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"\x00garbage" * 1000)
    with Outbox(path, site="s", device="d", seq_mark=300) as ob:
        assert ob.recovery.moved_aside is not None
        assert ob.put(ev()) == 1301, "seq must not go backwards when nothing of the old file is readable"


def test_outbox__put_many_is_one_transaction_in_order(outbox: Outbox, tmp_path: Path) -> None:
    events = [ev() for _ in range(5)] + [ev(EventType.CAMERA_FAULT, "cam")]
    seqs = outbox.put_many(events)
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 6
    assert [r.id for r in outbox.next_batch(0, 10)] == [e.id for e in events]
    assert outbox.pending() == 6


def test_outbox__put_many_of_nothing_records_nothing(outbox: Outbox) -> None:
    assert outbox.put_many([]) == []
    assert outbox.pending() == 0
    assert outbox.put(ev()) == 1, "no seq was taken"


def test_outbox__put_many_all_or_nothing_when_full(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", site="s", device="d", max_mb=1)
    big = "y" * 3000
    with pytest.raises(OutboxFullError):
        for _ in range(200):
            ob.put_many([ev(note=big) for _ in range(10)])
    before = ob.pending()
    with pytest.raises(OutboxFullError):
        ob.put_many([ev(note=big) for _ in range(50)])
    assert ob.pending() == before, "a failed batch must leave nothing half-written"
    ob.close()


def test_outbox__reserved_seq_is_never_handed_out_again(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, site="s", device="d") as ob:
        first = ob.put(ev())
        held = ev()
        reserved = ob.reserve_seq()
        assert reserved == first + 1
        assert ob.put(ev()) == first + 2, "an auto seq must skip the one reserved for a held event"
        assert ob.put(held, seq=reserved) == reserved, "the held event keeps the seq it may have been sent with"
        assert [r.id for r in ob.next_batch(0, 10)][1] == held.id
        assert ob.top_seq() == first + 2
    with Outbox(path, site="s", device="d") as ob:
        assert ob.put(ev()) == first + 3


def test_outbox__state_mark_is_honoured_only_when_the_file_is_behind_it(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, site="s", device="d") as ob:
        top = max(ob.put(ev()) for _ in range(3))
    with Outbox(path, site="s", device="d", seq_mark=top) as ob:
        assert ob.recovery.seq_resumed_above is None, "the file's own counter is trusted when it is not behind"
        assert ob.put(ev()) == top + 1
    for f in tmp_path.glob("o.db*"):
        f.unlink()  # a technician frees space, or outbox.path changed
    with Outbox(path, site="s", device="d", seq_mark=top + 1) as ob:
        assert ob.recovery.seq_resumed_above == top + 1 + 1000
        assert ob.put(ev()) == top + 1 + 1000 + 1


def test_outbox__salvaged_file_is_renamed_and_never_salvaged_twice(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 100)
    with Outbox(path, site="s", device="d") as ob:
        aside = ob.recovery.moved_aside
        assert aside is not None
        assert aside.name.startswith("outbox.db.corrupt-")
        assert aside.name.endswith(".salvaged")
    with Outbox(path, site="s", device="d") as ob:
        assert ob.recovery.moved_aside is None


@pytest.mark.parametrize("kind", [EventType.CAMERA_FAULT, EventType.PANIC])
def test_outbox__seq_reserved_while_a_commit_is_inside_its_transaction_is_never_given_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: EventType
) -> None:
    # reserve_seq takes only the seq lock (it must not wait behind a stuck commit), so another thread
    # can reserve between the commit's check of the reserved seqs and its INSERT.
    with Outbox(tmp_path / "o.db", site="s", device="d", intake=False) as ob:
        ob.put(ev(EventType.CAMERA_FAULT, "cam"))
        reserved: list[int] = []
        conn = ob._conn

        class ReservingAtInsert:
            def __getattr__(self, name: str) -> object:
                return getattr(conn, name)

            def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
                if sql.startswith("INSERT INTO outbox") and not reserved:
                    reserved.append(ob.reserve_seq())
                return conn.execute(sql, *args)

        monkeypatch.setattr(ob, "_conn", ReservingAtInsert())
        committed = ob.put(ev(kind, "cam" if kind is EventType.CAMERA_FAULT else "panic"))
        assert committed != reserved[0], "the held event and the committed one share a seq"
        held = ev()
        assert ob.put(held, seq=reserved[0]) == reserved[0], "the held event is stored under its own seq"
        assert ob.top_seq() == max(committed, reserved[0])
        assert ob.put(ev()) == max(committed, reserved[0]) + 1


def test_outbox__a_failed_commit_uses_no_seq(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", site="s", device="d", intake=False) as ob:
        first = ob.put(ev())
        other = sqlite3.connect(tmp_path / "o.db", timeout=0)
        other.execute("BEGIN IMMEDIATE")  # the write lock: the next commit fails on busy
        ob._conn.execute("PRAGMA busy_timeout=0")
        with pytest.raises(OutboxError):
            ob.put(ev())
        other.execute("ROLLBACK")
        assert ob.put(ev()) == first + 1, "a commit that failed used no seq"
        other.close()
