"""The outbox's intake (agent/outbox_intake.py): real files, crashes, a full intake, damaged blocks, I/O faults.

A crash is a child process that records and exits with ``os._exit`` (nothing
closed, nothing moved), or :func:`abandon`, which drops the outbox's files
as the end of a process would.  Either way what was written without a sync
is still in the page cache, as after a crash of the agent alone; a power cut
is what the sync is for, and the CRC test covers a block cut short by one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from agent import outbox_intake
from agent.errors import OutboxFullError
from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.outbox_intake import SLOT_BYTES, SLOTS
from tests.support.clocks import synced_clock
from tests.support.outboxfile import abandon, intake_live, intake_path, pending

CLOCK = synced_clock()
ROOT = Path(__file__).resolve().parents[1]


def ev(kind: EventType = EventType.PANIC, source: str = "panic", *, test: bool = False) -> Event:
    return Event.create(CLOCK, kind, source, test=test, data={"pin": 17})


def ev_with(kind: EventType, **data: object) -> Event:
    return Event.create(CLOCK, kind, "x", data=data)


def in_sqlite(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, seq FROM outbox"))


def test_intake__an_acknowledged_event_never_reaches_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        e = ev()
        row = ob.put_row(e)
        assert ob.pending() == 1
        assert [r.id for r in ob.next_batch(0, 10)] == [e.id]
        assert ob.get(row.seq) == row
        assert ob.ack([row.seq]) == 1
        assert ob.pending() == 0
        assert ob.next_batch(0, 10) == []
        assert intake_live(db) == {}
    assert in_sqlite(db) == {}
    with Outbox(db, site="s", device="d") as again:
        assert again.put(ev()) == row.seq + 1, "seq never goes back, though SQLite never saw the first"


def test_intake__a_clean_stop_moves_waiting_events_into_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        rows = ob.put_rows([ev(), ev(EventType.TAMPER, "lid"), ev(test=True)])
        assert in_sqlite(db) == {}
    assert in_sqlite(db) == {r.id: r.seq for r in rows}
    assert intake_live(db) == {}
    with Outbox(db, site="s", device="d") as again:
        assert [r.id for r in again.next_batch(0, 10)] == [r.id for r in rows]
        assert again.recovery.pending == 3


def _crash_after(db: Path, code: str) -> list[tuple[str, int]]:
    """Run ``code`` with ``ob`` open on ``db`` in a child that ends with os._exit; return what it printed."""
    script = (
        textwrap.dedent(
            f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from agent.events import Event, EventType
        from agent.outbox import Outbox
        from tests.support.clocks import synced_clock
        clock = synced_clock()
        def ev(kind=EventType.PANIC):
            return Event.create(clock, kind, "x", data={{}})
        ob = Outbox({str(db)!r}, site="s", device="d")
        """
        )
        + textwrap.dedent(code)
        + "\nsys.stdout.flush()\nos._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return [(i, int(s)) for i, s in (line.split() for line in out.stdout.splitlines())]


def test_intake__after_a_crash_waiting_events_are_sent_in_seq_order_and_acked_ones_are_not(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    printed = _crash_after(
        db,
        """
        rows = ob.put_rows([ev(), ev(EventType.TAMPER)]) + [ob.put_row(ev()) for _ in range(3)]
        ob.ack([rows[1].seq, rows[3].seq])
        for r in rows:
            print(r.id, r.seq)
        """,
    )
    assert [s for _, s in printed] == [1, 2, 3, 4, 5]
    waiting = [printed[i] for i in (0, 2, 4)]
    assert in_sqlite(db) == {}
    with Outbox(db, site="s", device="d") as ob:
        assert [(r.id, r.seq) for r in ob.next_batch(0, 10)] == waiting
        assert ob.pending() == 3
        assert ob.recovery.pending == 3
        assert ob.put(ev()) == 6
        assert ob.ack([s for _, s in waiting]) == 3
    assert {i for i, _ in printed} & set(in_sqlite(db)) == set()


def test_intake__seq_survives_a_crash_when_every_event_was_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    printed = _crash_after(
        db,
        """
        for _ in range(70):  # more than the intake's blocks: each is reused
            r = ob.put_row(ev())
            ob.ack([r.seq])
        print(r.id, r.seq)
        """,
    )
    assert printed[0][1] == 70
    with Outbox(db, site="s", device="d") as ob:
        assert ob.pending() == 0
        assert ob.put(ev()) == 71


def test_intake__when_full_the_next_commit_moves_everything_into_sqlite_in_seq_order(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        first = [ob.put_row(ev()) for _ in range(SLOTS)]
        assert ob._intake is not None
        assert ob._intake.free == 0
        assert in_sqlite(db) == {}
        extra = ob.put_row(ev(EventType.CAMERA_FAULT, "cam"))  # no room: SQLite, and the 64 move with it
        assert extra.seq == SLOTS + 1
        assert in_sqlite(db) == {r.id: r.seq for r in [*first, extra]}
        assert intake_live(db) == {}
        assert ob._intake.free == SLOTS - 1, "the block with the top seq is kept until a higher one is written"
        assert [r.seq for r in ob.next_batch(0, 1000)] == list(range(1, SLOTS + 2))
        assert ob.ack([r.seq for r in first]) == SLOTS
        again = ob.put_row(ev())
        assert again.seq == SLOTS + 2
        assert intake_live(db) == {again.id: (again.seq, "panic")}


def test_intake__a_crash_after_acknowledged_alarms_is_no_replaced_outbox(tmp_path: Path) -> None:
    """The state file's mark (top_seq() at every tick) counts intake seqs SQLite never saw: no false alarm."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    for _ in range(3):
        ob.ack([ob.put_row(ev()).seq])
    mark = ob.top_seq()
    abandon(ob)
    with Outbox(db, site="s", device="d", seq_mark=mark) as again:
        assert again.recovery.seq_resumed_above is None
        assert again.put(ev()) == mark + 1
    intake_path(db).unlink()
    with Outbox(db, site="s", device="d", seq_mark=mark + 5) as third:  # a mark above both files: replaced
        assert third.recovery.seq_resumed_above is not None


def test_intake__non_alarms_go_to_sqlite_so_they_never_take_the_alarms_reserve(tmp_path: Path) -> None:
    """Camera faults while the link is down fill SQLite's non-alarm share, never the intake: the press still fits."""
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d", max_mb=0.25, intake=False) as ob:
        seqs = []
        with pytest.raises(OutboxFullError):
            for _ in range(5000):
                seqs.append(ob.put(ev_with(EventType.PANIC, note="y" * 1500)))
        ob.ack(seqs[:4])  # room for a few alarms again
    with Outbox(db, site="s", device="d", max_mb=0.25) as ob:
        for _ in range(SLOTS):
            with contextlib.suppress(OutboxFullError):  # the reserve is for alarms
                ob.put(ev_with(EventType.CAMERA_FAULT, detail="z" * 1500))
        assert intake_live(db) == {}
        press = ob.put_row(ev_with(EventType.PANIC, note="y" * 1500))
        assert intake_live(db) == {press.id: (press.seq, "panic")}


def test_intake__a_write_cut_short_never_costs_the_top_seq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block holding the highest seq is never the one a new write goes to, so a torn write cannot lose it."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    waiting = [ob.put_row(ev(EventType.TAMPER, "lid")) for _ in range(SLOTS - 2)]
    alarm = ob.put_row(ev())
    ob.ack([alarm.seq])  # the top seq's block is done, but kept
    assert ob._intake is not None
    assert ob._intake.free == 1
    real = os.pwrite
    torn_at: list[int] = []

    def torn(fd: int, data: bytes, offset: int) -> int:
        if len(data) > 100:  # a block: the power goes after its first 24 bytes
            torn_at.append(offset)
            real(fd, bytes(data[:16]) + bytes(8), offset)
            raise KeyboardInterrupt
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", torn)
    with pytest.raises(KeyboardInterrupt):
        ob.put_row(ev())
    monkeypatch.undo()
    abandon(ob)
    data = intake_path(db).read_bytes()
    assert outbox_intake.decode(data[torn_at[0] : torn_at[0] + SLOT_BYTES]) is None, "the torn block is damaged"
    with Outbox(db, site="s", device="d") as again:
        assert again.put(ev()) == alarm.seq + 1, "the published seq is never handed out again"
        assert again.pending() == len(waiting) + 1


def test_intake__an_ack_naming_a_seq_twice_counts_it_once(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", site="s", device="d") as ob:
        row = ob.put_row(ev())
        other = ob.put_row(ev())
        assert ob.ack([row.seq, row.seq]) == 1
        assert ob.pending() == 1
        assert [r.seq for r in ob.next_batch(0, 10)] == [other.seq]


def test_intake__lanes_and_limits_merge_intake_and_sqlite_rows(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        old = ob.put_rows([ev(EventType.CAMERA_FAULT, "cam") for _ in range(SLOTS + 1)])  # non-alarms: SQLite
        fresh = [ob.put_row(ev()), ob.put_row(ev(test=True)), ob.put_row(ev(EventType.TAMPER, "lid"))]
        assert set(intake_live(db)) == {r.id for r in fresh}
        assert [r.seq for r in ob.next_batch(0, 3, urgent=True)] == [fresh[0].seq, fresh[2].seq]
        assert [r.seq for r in ob.next_batch(old[-2].seq, 3, urgent=False)] == [old[-1].seq, fresh[1].seq]
        assert [r.seq for r in ob.next_batch(old[-1].seq - 1, 2)] == [old[-1].seq, fresh[0].seq]
        assert ob.stats().pending == len(old) + 3
        assert ob.ack([old[0].seq, fresh[0].seq]) == 2
        assert ob.pending() == len(old) + 1


def test_intake__a_block_cut_short_is_skipped_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "outbox.db"
    printed = _crash_after(
        db,
        """
        for r in (ob.put_row(ev()), ob.put_row(ev())):
            print(r.id, r.seq)
        """,
    )
    live = intake_live(db)
    assert set(live) == {i for i, _ in printed}
    data = bytearray(intake_path(db).read_bytes())
    blocks = [at for at in range(0, len(data), SLOT_BYTES) if data[at : at + 4] == outbox_intake.MAGIC]
    victim = max(blocks, key=lambda at: int.from_bytes(data[at + 5 : at + 13], "little"))  # the newest: seq 2
    data[victim + 200] ^= 0xFF  # inside its payload: as if the power went mid-write
    intake_path(db).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), Outbox(db, site="s", device="d") as ob:
        assert [(r.id, r.seq) for r in ob.next_batch(0, 10)] == [printed[0]]
        assert "1 blocks were cut short" in caplog.text
        assert ob.put(ev()) == 2, "seq 2 was never published (its block never synced whole), so it may be reused"


def test_intake__a_failed_sync_falls_back_to_sqlite_with_the_same_seqs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        before = ob.put_row(ev())

        def eio(_fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", eio)  # the intake calls os.fdatasync; SQLite syncs in C
        rows = ob.put_rows([ev(), ev(EventType.TAMPER, "lid")])
        assert [r.seq for r in rows] == [before.seq + 1, before.seq + 2], "no gap in seq"
        assert not ob._take_new, "the intake takes no new events after a failure"
        assert "outbox intake" in caplog.text
        assert "failed" in caplog.text
        assert in_sqlite(db) == {r.id: r.seq for r in [before, *rows]}, "the waiting one moved with them"
        monkeypatch.undo()
        later = ob.put_row(ev())
        assert later.seq == before.seq + 3
        assert later.id in in_sqlite(db)
        assert ob.pending() == 4


def test_intake__short_writes_are_carried_on_until_the_block_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A regular file may take fewer bytes than asked: creation and every block still write whole."""
    real = os.pwrite
    calls: list[int] = []

    def short(fd: int, data: bytes, offset: int) -> int:
        calls.append(len(data))
        return real(fd, bytes(data[:100]), offset)

    monkeypatch.setattr(os, "pwrite", short)
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        rows = ob.put_rows([ev(), ev(EventType.TAMPER, "lid")])
        assert intake_path(db).stat().st_size == SLOTS * SLOT_BYTES
        assert intake_live(db) == {r.id: (r.seq, r.type) for r in rows}, "each block decodes: CRC and all"
        ob.ack([r.seq for r in rows])
    assert len(calls) > 2 * SLOTS


def test_intake__a_failure_after_opening_closes_every_file_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a: object) -> None:
        raise RuntimeError("adopting failed")

    monkeypatch.setattr(Outbox, "_adopt", broken)
    db = tmp_path / "outbox.db"
    before = _open_files(tmp_path)
    with pytest.raises(RuntimeError, match="adopting failed"):
        Outbox(db, site="s", device="d")
    assert _open_files(tmp_path) == before == set()


def _open_files(folder: Path) -> set[str]:
    """This process's open files under ``folder``."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                found.add(target)
    return found


def test_intake__an_unusable_intake_file_leaves_sqlite_alone_doing_the_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    intake_path(db).mkdir()  # something that is not a file where the intake goes
    with caplog.at_level(logging.WARNING), Outbox(db, site="s", device="d") as ob:
        assert ob._intake is None
        assert "cannot be used" in caplog.text
        seq = ob.put(ev())
        assert in_sqlite(db) == {ob.next_batch(0, 1)[0].id: seq}


def test_intake__an_event_too_big_for_a_block_goes_to_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        big = Event.create(CLOCK, EventType.CAMERA_FAULT, "cam", data={"detail": "x" * SLOT_BYTES})
        row = ob.put_row(big)
        assert in_sqlite(db) == {big.id: row.seq}
        assert intake_live(db) == {}


class IntakeMachine(RuleBasedStateMachine):
    """Puts, acks, clean stops and crashes in any order: what is pending is always exactly what is not acked."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(os.environ["INTAKE_MACHINE_DIR"]) / f"m{id(self)}-{os.urandom(4).hex()}"
        self.dir.mkdir()
        self.db = self.dir / "outbox.db"
        self.ob = Outbox(self.db, site="s", device="d")
        self.waiting: dict[int, str] = {}  # seq -> id
        self.top = 0

    @rule(n=st.integers(1, 5), kinds=st.lists(st.sampled_from(list(EventType)[:4]), min_size=5, max_size=5))
    def put(self, n: int, kinds: list[EventType]) -> None:
        rows = self.ob.put_rows([ev(k) for k in kinds[:n]])
        seqs = [r.seq for r in rows]
        assert seqs == list(range(self.top + 1, self.top + n + 1)), "seqs follow on, no gap, never back"
        self.top = seqs[-1]
        self.waiting.update({r.seq: r.id for r in rows})

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        if not self.waiting:
            return
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.waiting)), unique=True, max_size=8))
        assert self.ob.ack(chosen) == len(chosen)
        for s in chosen:
            del self.waiting[s]

    @rule()
    def stop_and_start(self) -> None:
        self.ob.close()
        assert intake_live(self.db) == {}
        self.ob = Outbox(self.db, site="s", device="d")

    @rule()
    def crash_and_start(self) -> None:
        abandon(self.ob)
        self.ob = Outbox(self.db, site="s", device="d")

    @invariant()
    def pending_is_what_is_not_acked(self) -> None:
        rows = self.ob.next_batch(0, 10_000)
        assert [(r.seq, r.id) for r in rows] == sorted(self.waiting.items())
        assert self.ob.pending() == len(self.waiting)
        assert {i: s for i, (s, _t) in pending(self.db).items()} == {i: s for s, i in self.waiting.items()}

    def teardown(self) -> None:
        self.ob.close()


def test_intake__any_order_of_puts_acks_stops_and_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTAKE_MACHINE_DIR", str(tmp_path))
    run_state_machine_as_test(
        IntakeMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
