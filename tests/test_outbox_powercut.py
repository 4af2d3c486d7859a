"""A hypothesis state machine of power cuts over the outbox and its intake (written by a crash hunt).

Rules: puts, acks, heartbeat ticks (the mark), clean stops, crashes, power
cuts that lose unsynced intake blocks (whole, or torn at a sector) and the
SQLite deletes since the last full commit, a power cut between an intake
write and its ``fdatasync``, an ``fdatasync`` failing with EIO once, and
SQLite failing at BEGIN, INSERT or COMMIT.  Invariants: nothing waiting is
lost, a seq always names the same id, nothing comes back under another seq,
new seqs never go back, and the mark never makes the same outbox look
replaced.  ``PC_EXAMPLES`` sets the number of examples (40 here; 1,000 passed
when it was written).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.outbox_intake import SLOT_BYTES
from tests.support.clocks import synced_clock
from tests.support.outboxfile import abandon, intake_path

CLOCK = synced_clock()
KINDS = [EventType.PANIC, EventType.TAMPER, EventType.CAMERA_FAULT, EventType.INPUT_FAULT]
REAL_FDATASYNC = os.fdatasync


def ev(kind: EventType) -> Event:
    return Event.create(CLOCK, kind, "x", data={"pin": 17})


class PowerCutMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(os.environ["PC_DIR"]) / f"m{os.urandom(4).hex()}"
        self.dir.mkdir()
        self.db = self.dir / "outbox.db"
        self.ob = self._open()
        self.ids: dict[int, str] = {}  # every seq handed out -> its id
        self.seq_of: dict[str, int] = {}
        self.waiting: set[str] = set()
        self.mark = 0
        self.top = 0
        self.limbo: set[int] = set()
        self._snap_sqlite()
        self._snap_intake()

    def _open(self) -> Outbox:
        return Outbox(self.db, site="s", device="d", seq_mark=getattr(self, "mark", 0))

    # durable images -------------------------------------------------------------
    def _snap_sqlite(self) -> None:
        snap = self.dir / "sqlite-snap"
        shutil.rmtree(snap, ignore_errors=True)
        snap.mkdir()
        for s in ("", "-wal"):
            p = Path(f"{self.db}{s}")
            if p.exists():
                shutil.copyfile(p, snap / p.name)

    def _snap_intake(self) -> None:
        p = intake_path(self.db)
        if p.exists():
            shutil.copyfile(p, self.dir / "intake-snap")

    def _sync_hook(self, fd: int) -> None:
        if self.cut_next is not None:
            raise self.cut_next
        self._fault_hook(fd)
        REAL_FDATASYNC(fd)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if target == str(intake_path(self.db)):
            self._snap_intake()

    # faults ------------------------------------------------------------------------
    fail_sync = False

    def _fault_hook(self, fd: int) -> bool:
        if self.fail_sync:
            self.fail_sync = False
            raise OSError(5, "Input/output error")
        return False

    @rule()
    def intake_sync_fails_once(self) -> None:
        self.fail_sync = True

    @rule(
        where=st.sampled_from(["BEGIN", "INSERT", "COMMIT"]),
        kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
    )
    def sqlite_fails_in_a_put(self, where: str, kinds: list[EventType]) -> None:
        import sqlite3

        from agent.errors import OutboxError

        conn = self.ob._conn
        fired: list[str] = []

        class Faulty:
            def __getattr__(self, name: str) -> Any:
                return getattr(conn, name)

            def execute(self, sql: str, *args: Any) -> Any:
                if not fired and sql.startswith(where if where != "INSERT" else "INSERT INTO outbox"):
                    fired.append(sql)
                    if where == "BEGIN":
                        raise sqlite3.OperationalError("database is locked")
                    if where == "COMMIT":
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute(sql, *args)
                    raise sqlite3.OperationalError("disk I/O error")
                return conn.execute(sql, *args)

        self.ob._conn = Faulty()  # type: ignore[assignment]
        armed = self.fail_sync
        try:
            rows = self.ob.put_rows([ev(k) for k in kinds])
        except OutboxError:
            rows = []  # the recorder would hold them; not modelled
            if armed and not self.fail_sync:  # documented: the unsynced block may still hold them after a crash
                self.limbo.update(range(self.top + 1, self.top + 1 + len(kinds)))
                self.top += len(kinds)
        finally:
            self.ob._conn = conn
        for r in rows:
            assert r.seq > self.top or r.seq in self.limbo
            self.top = r.seq
            self.ids[r.seq] = r.id
            self.seq_of[r.id] = r.seq
            self.waiting.add(r.id)
        if fired or rows:
            self._snap_sqlite()

    @rule(
        kinds=st.lists(st.sampled_from([EventType.PANIC, EventType.TAMPER]), min_size=1, max_size=3),
        seed=st.integers(0, 2**16),
        keep_sqlite=st.booleans(),
    )
    def power_cut_inside_an_intake_write(self, kinds: list[EventType], seed: int, keep_sqlite: bool) -> None:
        events = [ev(k) for k in kinds]
        if self.ob._intake is None or not self.ob._take_new or self.ob._intake.free < len(events):
            return

        class Cut(BaseException):
            pass

        self.cut_next = Cut
        first = self.ob._top + 1
        try:
            self.ob.put_rows(events)
        except Cut:
            pass
        else:
            raise AssertionError("no sync")
        finally:
            self.cut_next = None
        maybe = {first + i: e.id for i, e in enumerate(events)}
        self.power_cut_and_start(seed, keep_sqlite)
        got = {r.seq: r.id for r in self.ob.next_batch(0, 100_000)}
        for seq, i in maybe.items():
            if got.get(seq) == i:  # the block reached the disk: a real event now
                self.ids[seq] = i
                self.seq_of[i] = seq
                self.waiting.add(i)
                self.top = max(self.top, seq)

    cut_next: type[BaseException] | None = None

    # rules -------------------------------------------------------------------------
    @rule(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4))
    def put(self, kinds: list[EventType]) -> None:
        before = self.ob._conn.total_changes
        rows = self.ob.put_rows([ev(k) for k in kinds])
        for r in rows:
            assert r.seq > self.top or r.seq in self.limbo, f"seq {r.seq} handed out again (top was {self.top})"
            assert r.seq not in self.ids
            self.limbo.discard(r.seq)
            self.top = max(self.top, r.seq)
            self.ids[r.seq] = r.id
            self.seq_of[r.id] = r.seq
            self.waiting.add(r.id)
        if self.ob._conn.total_changes != before:
            self._snap_sqlite()  # a FULL commit: everything in SQLite so far is on disk

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        pend = sorted(self.seq_of[i] for i in self.waiting)
        if not pend:
            return
        chosen = data.draw(st.lists(st.sampled_from(pend), unique=True, max_size=6))
        self.ob.ack(chosen)
        for s in chosen:
            self.waiting.discard(self.ids[s])

    @rule()
    def tick(self) -> None:
        self.mark = max(self.mark, self.ob.top_seq())

    @rule()
    def stop_and_start(self) -> None:
        self.ob.close()
        self._snap_sqlite()
        self._snap_intake()
        self.mark = max(self.mark, self.top)  # the stop saves the mark
        self._restart()

    @rule()
    def crash_and_start(self) -> None:
        abandon(self.ob)
        self._restart()

    @rule(seed=st.integers(0, 2**16), keep_sqlite=st.booleans())
    def power_cut_and_start(self, seed: int, keep_sqlite: bool) -> None:
        abandon(self.ob)
        rnd = random.Random(seed)
        if not keep_sqlite:  # unsynced deletes since the last FULL commit are lost
            for s in ("", "-wal", "-shm"):
                Path(f"{self.db}{s}").unlink(missing_ok=True)
            for p in (self.dir / "sqlite-snap").iterdir():
                shutil.copyfile(p, self.dir / p.name)
        else:
            Path(f"{self.db}-shm").unlink(missing_ok=True)
        snap = self.dir / "intake-snap"
        if snap.exists():
            synced = snap.read_bytes()
            now = bytearray(intake_path(self.db).read_bytes())
            for at in range(0, len(now), SLOT_BYTES):
                if now[at : at + SLOT_BYTES] != synced[at : at + SLOT_BYTES]:
                    r = rnd.random()
                    if r < 0.4:
                        now[at : at + SLOT_BYTES] = synced[at : at + SLOT_BYTES]  # never reached the disk
                    elif r < 0.7:
                        cut = rnd.randrange(0, SLOT_BYTES // 512) * 512  # torn at a sector boundary
                        now[at + cut : at + SLOT_BYTES] = synced[at + cut : at + SLOT_BYTES]
            intake_path(self.db).write_bytes(bytes(now))
        self._restart()

    def _restart(self) -> None:
        self.ob = self._open()
        if self.ob.recovery.seq_resumed_above is not None:
            self.top = max(self.top, self.ob.recovery.seq_resumed_above)
        assert self.limbo or self.ob.recovery.seq_resumed_above is None, (
            f"misfire: mark {self.mark}, {self.ob.recovery}"
        )
        self._snap_sqlite()
        self._snap_intake()

    @invariant()
    def consistent(self) -> None:
        rows = self.ob.next_batch(0, 100_000)
        got = {r.id: r.seq for r in rows}
        lost = self.waiting - set(got)
        assert not lost, f"lost: {[(self.seq_of[i], i) for i in lost]}"
        for r in rows:
            if r.seq in self.limbo:
                continue
            assert self.ids.get(r.seq) == r.id, f"seq {r.seq} now names {r.id}, was {self.ids.get(r.seq)}"
        assert len(got) == len(rows), "one id twice"
        assert self.ob.pending() == len(rows)

    def teardown(self) -> None:
        self.ob.close()


def test_power_cut_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PC_DIR", str(tmp_path))
    holder: dict[str, PowerCutMachine] = {}

    class M(PowerCutMachine):
        def __init__(self) -> None:
            monkeypatch.setattr(os, "fdatasync", lambda fd: holder["m"]._sync_hook(fd))  # noqa: PLW0108 - the machine of the moment
            super().__init__()

        def _open(self) -> Outbox:
            holder["m"] = self
            return super()._open()

    run_state_machine_as_test(
        M,
        settings=settings(
            max_examples=int(os.environ.get("PC_EXAMPLES", "40")),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
