"""The alarm path end to end: agent process, real mosquitto, a central subscriber."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from tests.support.mqtt import Central, retained

pytestmark = pytest.mark.broker


def _wait(pred: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def test_press__reaches_central_with_every_contract_field(broker, central, agent_proc, device, validate):
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


def test_status__online_on_connect_validates(broker, central, agent_proc, device, validate):
    agent_proc(broker.port, device=device)
    started = central.wait_for(lambda m: m.topic.endswith("/event/agent_started"))  # events go before the birth status
    msg = central.wait_for(lambda m: m.topic == f"campus/main/{device}/status")
    doc = validate("status", msg.doc)
    assert doc["state"] == "online"
    assert set(doc["inputs"]) == {"panic"}
    assert doc["link"]["broker"] == f"127.0.0.1:{broker.port}"
    validate("event", started.doc)
    assert started.doc["data"]["reason"] in ("boot", "restart")


def test_outage__20_presses_survive_sigkill_and_arrive_in_order(own_broker, agent_proc, device, tmp_path):
    agent = agent_proc(own_broker.port, device=device)
    _wait(lambda: agent.status()["link"]["connected"], what="first connection")
    own_broker.stop()
    _wait(lambda: not agent.status()["link"]["connected"], what="agent to notice the outage")
    for _ in range(20):
        agent.click("panic")
    recorded = agent.wait_recorded(20)
    ids_in_order = [e["id"] for e in sorted(recorded, key=lambda e: e["seq"])]
    agent.kill()

    with sqlite3.connect(tmp_path / device / "outbox.db") as db:
        on_disk = [r[0] for r in db.execute("SELECT id FROM outbox WHERE type = 'panic' ORDER BY seq")]
    assert on_disk == ids_in_order

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
        _wait(lambda: agent.status()["status"]["outbox"]["pending"] == 0, what="outbox to drain")
    finally:
        central.close()


def test_sigkill__retained_offline_will_is_seen(broker, agent_proc, device, validate):
    agent = agent_proc(broker.port, device=device)
    topic = f"campus/main/{device}/status"
    _wait(lambda: (retained(broker.port, topic) or {}).get("state") == "online", what="retained online status")
    agent.kill()
    doc = _wait(lambda: (d := retained(broker.port, topic)) and d["state"] == "offline" and d,
                timeout=15, what="retained offline will")
    validate("status", doc)
    assert doc["reason"] == "lost"


def test_clean_stop__retained_offline_shutdown(broker, agent_proc, device, validate):
    agent = agent_proc(broker.port, device=device)
    topic = f"campus/main/{device}/status"
    _wait(lambda: agent.status()["link"]["connected"], what="connection")
    assert agent.stop() == 0
    doc = retained(broker.port, topic)
    assert doc is not None
    validate("status", doc)
    assert (doc["state"], doc["reason"]) == ("offline", "shutdown")
