"""Real alarms overtake a backlog (issue 9, item 4): the outbox's two lanes and the agent end to end.

Timing is not asserted here (bench/backlog.py measures press → delivery
behind a backlog); the end-to-end test asserts by counting: a real press
arrives while the backlog is still draining, and no more routine events
arrive before it than the broker had acknowledged when the press was
recorded plus one send window (the rows that were already in flight; routine
rows leave one slot of it free for an alarm).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.outbox_lanes import URGENT_MARK
from agent.uplink import Uplink
from tests.support.agentproc import AgentFactory, AgentProc, unique_id, write_config
from tests.support.broker import Broker
from tests.support.clocks import synced_clock
from tests.support.mqtt import Central, Msg
from tests.support.waiting import eventually

CLOCK = synced_clock()
BACKLOG = 50_000
WINDOW = 20  # mqtt.max_inflight, the default, set explicitly because the assertion uses it


def _backlog_event(i: int) -> Event:
    """Routine rows of every kind a backlog holds: test presses (alarms by type, not real), faults."""
    if i % 3 == 0:
        return Event.create(CLOCK, EventType.PANIC, "panic", test=True, data={"pin": 17, "contact": "normally_open"})
    if i % 3 == 1:
        return Event.create(
            CLOCK,
            EventType.CAMERA_FAULT,
            "gate-cam",
            data={"detail": "connection refused", "kind": "http", "failures": 3},
        )
    return Event.create(CLOCK, EventType.INPUT_RESTORED, "panic", data={"held_s": 1.0})


def _urgent(doc: dict[str, Any]) -> bool:
    return doc["type"] in ("panic", "tamper") and doc["test"] is False


# ---- the read path ----------------------------------------------------------------------------------


def test_outbox_rows__urgent_mark_matches_the_event_body() -> None:
    real = Event.create(CLOCK, EventType.PANIC, "panic", data={"note": '"test":false'})
    practice = Event.create(CLOCK, EventType.PANIC, "panic", test=True, data={"note": '"test":false'})
    assert URGENT_MARK in real.body("s", "d")
    assert URGENT_MARK not in practice.body("s", "d")  # the same text inside a string value is escaped


def test_outbox__lanes_read_real_alarms_and_the_rest_separately(outbox: Outbox) -> None:
    ob = outbox
    kinds = [EventType.INPUT_FAULT, EventType.PANIC, EventType.TAMPER, EventType.CAMERA_FAULT, EventType.PANIC]
    seqs = [ob.put(Event.create(CLOCK, k, "x", test=i == 4)) for i, k in enumerate(kinds)]
    assert [r.seq for r in ob.next_batch(0, 10, urgent=True)] == [seqs[1], seqs[2]]
    assert [r.seq for r in ob.next_batch(0, 10, urgent=False)] == [seqs[0], seqs[3], seqs[4]]
    assert [r.seq for r in ob.next_batch(seqs[1], 10, urgent=True)] == [seqs[2]]
    assert [r.seq for r in ob.next_batch(0, 10)] == seqs  # no lane: every row in seq order, as before
    tamper = ob.get(seqs[2])
    assert tamper is not None
    assert tamper.type == "tamper"
    ob.ack([seqs[2]])
    assert ob.get(seqs[2]) is None
    assert ob.get(10_000) is None


_OLD_SCHEMA = """
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, type TEXT NOT NULL,
                     alarm INTEGER NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX outbox_evictable ON outbox (alarm, seq);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version=1;
"""


def test_outbox__an_outbox_from_before_the_alarm_lane_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    for i, kind in enumerate([EventType.INPUT_FAULT, EventType.PANIC, EventType.INPUT_FAULT]):
        e = Event.create(CLOCK, kind, "panic")
        conn.execute(
            "INSERT INTO outbox (id, type, alarm, created_ms, body) VALUES (?, ?, ?, ?, ?)",
            (e.id, kind.value, int(kind.is_alarm), i, e.body("s", "d")),
        )
    conn.commit()
    conn.close()
    with Outbox(path, site="s", device="d") as ob:
        assert ob.recovery.moved_aside is None
        assert [r.seq for r in ob.next_batch(0, 10, urgent=True)] == [2]
        assert [r.seq for r in ob.next_batch(0, 10, urgent=False)] == [1, 3]
        assert ob.put(Event.create(CLOCK, EventType.TAMPER, "lid")) == 4
        assert [r.seq for r in ob.next_batch(0, 10, urgent=True)] == [2, 4]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'outbox_lane'").fetchone() == ("outbox_lane",)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)  # an older agent can still open it
    conn.close()


# ---- end to end ---------------------------------------------------------------------------------------


def _fill(path: Path, device: str, count: int) -> None:
    with Outbox(path, site="main", device=device, max_mb=200) as ob:
        for start in range(0, count, 5000):
            ob.put_many([_backlog_event(i) for i in range(start, min(count, start + 5000))])
        assert ob.pending() == count


def _snapshot(central: Central) -> list[Msg]:
    with central._lock:  # a consistent copy of everything that arrived so far
        return [m for m in central.all if "/event/" in m.topic]


def _the_panic(eid: str) -> Callable[[Msg], bool]:
    return lambda m: "/event/panic" in m.topic and m.doc["id"] == eid


def _wait_recorded(agent: AgentProc, known: set[str], timeout: float = 30.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The new real panic in the agent's recent events, and the first status reply that shows it."""

    def recorded() -> tuple[dict[str, Any], dict[str, Any]] | None:
        st = agent.status()
        for ev in st["recent_events"]:
            if ev["type"] == "panic" and not ev["test"] and ev["id"] not in known:
                return ev, st
        return None

    return eventually(recorded, timeout, "the press to be recorded", interval=0.01)


@pytest.mark.broker
def test_backlog__a_real_press_overtakes_50000_pending_events(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str, tmp_path: Path
) -> None:
    workdir = tmp_path / device
    agent = agent_proc(
        broker.port, device=device, start=False, workdir=workdir, outbox={"max_mb": 200}, mqtt={"max_inflight": WINDOW}
    )  # drain_rate_per_s: the default (500/s)
    _fill(workdir / "outbox.db", device, BACKLOG)
    agent.start()
    central.wait_events(200, timeout=60)  # the drain is under way
    presses: set[str] = set()
    for _ in range(3):
        agent.click("panic")
        rec, st = _wait_recorded(agent, presses)
        presses.add(rec["id"])
        acked_then = st["link"]["delivered"]  # rows the broker had acknowledged, read after the press was recorded
        central.wait_for(_the_panic(rec["id"]), timeout=30)
        arrived = _snapshot(central)
        docs = [m.doc for m in arrived]
        at = next(i for i, d in enumerate(docs) if d["id"] == rec["id"])
        before = {d["id"] for d in docs[:at] if not _urgent(d)}
        # Published before the alarm = already acknowledged when it was recorded + what was in flight:
        # at most one window, less the slot routine rows leave free for an alarm.
        assert len(before) <= acked_then + WINDOW - 1, (len(before), acked_then)
        assert len(before) < BACKLOG  # it did not wait for the drain
        assert docs[at]["seq"] > max(d["seq"] for d in docs[:at])  # newer than everything before it
    last = rec
    # The drain goes on after the alarms: lower-seq routine events keep arriving after them.
    after = central.wait_for(lambda m: "/event/" in m.topic and not _urgent(m.doc), timeout=30)
    assert after.doc["seq"] < last["seq"]
    assert agent.status()["status"]["outbox"]["pending"] > 0  # still draining: the press did not wait for it
    ids = [m.doc["id"] for m in _snapshot(central)]
    assert len(ids) == len(set(ids))  # one session: nothing sent twice
    agent.stop()


@pytest.mark.broker
def test_refused_alarm__retried_within_seconds_while_routine_rows_flow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 5: an ACL refuses the alarm (PUBACK 0x87); it is retried 1, 2, 4 s later, loudly, not after minutes."""
    dev = unique_id("acl")
    root = f"campus/main/{dev}"
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    pw.touch()
    pw.chmod(0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), dev, "a-secret"], check=True)
    routine_only = (
        f"user {dev}\ntopic write {root}/status\ntopic write {root}/event/input_fault\ntopic read {root}/cmd/#\n"
    )
    acl.write_text(routine_only)
    b = Broker(tmp_path / "acl-broker", listener_extra=f"allow_anonymous false\npassword_file {pw}\nacl_file {acl}\n")
    b.start()
    secret = tmp_path / "secret"
    secret.write_text("a-secret")
    secret.chmod(0o600)
    cfg = write_config(
        tmp_path / "cfg",
        b.port,
        device=dev,
        mqtt={
            "username": dev,
            "password_file": str(secret),
            "protocol": 5,
            "client_id": dev,
            "allow_plaintext_password": True,
        },
    )
    outbox = Outbox(tmp_path / "o.db", site="main", device=dev)
    delivered: list[str] = []
    up = Uplink(
        load_config(cfg).mqtt,
        topic_root=root,
        outbox=outbox,
        status=lambda: {"v": 1, "state": "online"},
        offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
        on_delivered=lambda row: delivered.append(row.type),
    )
    try:
        with caplog.at_level(logging.ERROR, logger="agent.uplink"):
            alarm_seq = outbox.put(Event.create(CLOCK, EventType.PANIC, "panic"))
            up.start()
            for _ in range(3):
                outbox.put(Event.create(CLOCK, EventType.INPUT_FAULT, "panic", data={"reason": "stuck"}))
                up.wake()
            eventually(
                lambda: _refusals(caplog, alarm_seq) >= 3 and delivered.count("input_fault") == 3,
                30.0,
                "three refusals of the alarm and the routine rows delivered",
            )
            assert outbox.pending() == 1  # only the alarm: kept, never deleted on a refusal
            lines = [r for r in caplog.records if f"seq {alarm_seq} " in r.getMessage()]
            assert all(r.levelno == logging.CRITICAL for r in lines)
            assert [_retry_s(r.getMessage()) for r in lines[:3]] == [1, 2, 4]
            acl.write_text(routine_only + f"topic write {root}/event/#\n")  # the ACL is fixed
            assert b.proc is not None
            b.proc.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL
            eventually(lambda: "panic" in delivered, 60.0, "the alarm delivered after the ACL fix")
            assert outbox.pending() == 0
    finally:
        up.stop()
        outbox.close()
        b.stop()


def _refusals(caplog: pytest.LogCaptureFixture, seq: int) -> int:
    return sum(1 for r in caplog.records if f"event seq {seq} " in r.getMessage())


def _retry_s(message: str) -> int:
    return int(message.split("retrying in ")[1].split(" s", maxsplit=1)[0])
