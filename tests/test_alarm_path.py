"""The alarm path end to end: agent process, real mosquitto, a central subscriber."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.contract import Validate
from tests.support.mqtt import Central, retained
from tests.support.outboxfile import intake_live, pending
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def test_press__reaches_central_with_every_contract_field(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str, validate: Validate
) -> None:
    agent = agent_proc(broker.port, device=device)
    central.wait_for(lambda m: m.topic.endswith("/status") and m.doc["state"] == "online")
    agent.click("panic")
    msg = central.wait_for(lambda m: m.topic == f"campus/main/{device}/event/panic")
    doc = validate("event", msg.doc)
    assert doc["type"] == "panic"
    assert doc["source"] == "panic"
    assert doc["site"] == "main"
    assert doc["device"] == device
    assert doc["test"] is False
    assert isinstance(doc["clock_synced"], bool)
    recorded = agent.wait_recorded(1)
    assert recorded[0]["id"] == doc["id"]
    assert recorded[0]["seq"] == doc["seq"]


def test_status__online_on_connect_validates(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str, validate: Validate
) -> None:
    agent_proc(broker.port, device=device)
    started = central.wait_for(lambda m: m.topic.endswith("/event/agent_started"))  # events go before the birth status
    msg = central.wait_for(lambda m: m.topic == f"campus/main/{device}/status")
    doc = validate("status", msg.doc)
    assert doc["state"] == "online"
    assert set(doc["inputs"]) == {"panic"}
    assert doc["link"]["broker"] == f"127.0.0.1:{broker.port}"
    assert doc["heartbeat_s"] == 30, "the monitor judges silence by it"
    validate("event", started.doc)
    assert started.doc["data"]["reason"] in ("boot", "restart")


def test_outage__20_presses_survive_sigkill_and_arrive_in_order(
    own_broker: Broker, agent_proc: AgentFactory, device: str, tmp_path: Path
) -> None:
    agent = agent_proc(own_broker.port, device=device)
    eventually(lambda: agent.status()["link"]["connected"], what="first connection")
    own_broker.stop()
    eventually(lambda: not agent.status()["link"]["connected"], what="agent to notice the outage")
    for _ in range(20):
        agent.click("panic")
    recorded = agent.wait_recorded(20)
    ids_in_order = [e["id"] for e in sorted(recorded, key=lambda e: e["seq"])]
    agent.kill()

    found = pending(tmp_path / device / "outbox.db")
    on_disk = sorted((s, i) for i, (s, t) in found.items() if t == "panic")
    assert [i for _, i in on_disk] == ids_in_order
    assert len(intake_live(tmp_path / device / "outbox.db")) == 20, "the outage's presses are in the intake"

    own_broker.start()
    central = Central(own_broker.port, topics=(f"campus/+/{device}/event/#",))
    try:
        agent.start()
        panics = central.wait_events(20, "panic", timeout=30)
        first_seen: dict[str, int] = {}
        for d in panics:
            first_seen.setdefault(d["id"], d["seq"])
        assert list(first_seen) == ids_in_order, "not delivered in seq order, or ids changed"
        seqs = list(first_seen.values())
        assert seqs == sorted(seqs)
        eventually(lambda: agent.status()["status"]["outbox"]["pending"] == 0, what="outbox to drain")
    finally:
        central.close()


def test_sigkill__retained_offline_will_is_seen(
    broker: Broker, agent_proc: AgentFactory, device: str, validate: Validate
) -> None:
    agent = agent_proc(broker.port, device=device)
    topic = f"campus/main/{device}/status"
    eventually(lambda: (retained(broker.port, topic) or {}).get("state") == "online", what="retained online status")
    agent.kill()
    doc = eventually(
        lambda: (d := retained(broker.port, topic)) and d["state"] == "offline" and d,
        timeout=15,
        what="retained offline will",
    )
    validate("status", doc)
    assert doc["reason"] == "lost"


def test_clean_stop__retained_offline_shutdown(
    broker: Broker, agent_proc: AgentFactory, device: str, validate: Validate
) -> None:
    agent = agent_proc(broker.port, device=device)
    topic = f"campus/main/{device}/status"
    eventually(lambda: agent.status()["link"]["connected"], what="connection")
    assert agent.stop() == 0
    doc = retained(broker.port, topic)
    assert doc is not None
    validate("status", doc)
    assert (doc["state"], doc["reason"]) == ("offline", "shutdown")


@pytest.mark.parametrize("intake", [False, True])
def test_press__made_while_a_commit_is_stuck_is_recorded(
    broker: Broker, agent_proc: AgentFactory, device: str, tmp_path: Path, intake: bool
) -> None:
    """Issue 9 item 1: a 300 ms press queued behind a 3 s write lock on outbox.db still counts.

    Without the intake every commit waits for the lock; with it the presses
    never need SQLite, so they are recorded while the lock is still held.
    """
    inputs = [
        {"name": "a", "kind": "panic_button", "pin": 5, "debounce_ms": 50},
        {"name": "b", "kind": "panic_button", "pin": 6, "debounce_ms": 50},
    ]
    agent = agent_proc(broker.port, device=device, inputs=inputs, outbox={"intake": intake})
    agent.wait_recorded(1, type_="agent_started")
    lock = sqlite3.connect(tmp_path / device / "outbox.db", isolation_level=None, timeout=10)
    try:
        lock.execute("BEGIN IMMEDIATE")  # a slow disk: the agent's commits wait for this
        taken = time.monotonic()
        for name in ("a", "b"):
            agent.press(name)
            time.sleep(0.3)  # how long the person holds the button
            agent.release(name)
        if intake:
            got = agent.wait_recorded(2, timeout=15)
            assert time.monotonic() - taken < 3.0, "recorded through the intake while SQLite was locked"
        time.sleep(max(0.0, 3.0 - (time.monotonic() - taken)))  # the stall lasts 3 s in all
    finally:
        lock.execute("COMMIT")
        lock.close()
    got = agent.wait_recorded(2, timeout=15)
    assert sorted(e["source"] for e in got) == ["a", "b"]


def test_seq__never_goes_back_when_the_outbox_is_deleted(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str, tmp_path: Path, validate: Validate
) -> None:
    """Issue 9 item 3: outbox.db* deleted, agent-state.json kept: the next seq is above the old ones."""
    agent = agent_proc(broker.port, device=device)
    for _ in range(3):
        agent.click("panic")
    old_max = max(e["seq"] for e in agent.wait_recorded(3))
    assert agent.stop() == 0
    for f in (tmp_path / device).glob("outbox.db*"):
        f.unlink()
    agent.start()
    agent.click("panic")
    (new,) = agent.wait_recorded(1)
    assert new["seq"] > old_max, f"seq went back from {old_max} to {new['seq']}"
    started = next(e for e in agent.recent() if e["type"] == "agent_started")
    assert started["seq"] > old_max
    msg = central.wait_for(lambda m: m.topic.endswith("/event/agent_started") and m.doc["id"] == started["id"])
    assert validate("event", msg.doc)["data"]["seq_resumed_above"] >= old_max


def test_outbox__a_cloned_card_tells_the_centre_whose_events_it_kept_unsent(
    agent_proc: AgentFactory, device: str, tmp_path: Path, broker: Broker, validate: Validate
) -> None:
    """The card of one device, imaged with an alarm waiting and given another id: the alarm is not sent as the
    new device's, and the new device's agent_started says where the other device's outbox went."""
    original = agent_proc(1, device=device, workdir=tmp_path / "card")  # port 1: nobody listens, the alarm waits
    original.click("panic")
    original.wait_recorded(1)
    original.kill()
    clone_id = f"{device}-b"
    central = Central(broker.port, topics=("campus/main/+/event/#",))
    try:
        clone = agent_proc(broker.port, device=clone_id, workdir=tmp_path / "card")
        msg = central.wait_for(lambda m: m.topic == f"campus/main/{clone_id}/event/agent_started")
        foreign = validate("event", msg.doc)["data"]["outbox_foreign"]
        assert foreign["owner"] == f"main/{device}"
        assert ".foreign-" in foreign["moved_aside"]
        clone.click("panic")
        panic = central.wait_for(lambda m: m.topic.endswith("/event/panic")).doc
        assert panic["device"] == clone_id, "the original's alarm stayed unsent"
    finally:
        central.close()
