"""Black-box scenarios, the same for every broker: the agent as a real process, the default config.

Each test runs once per target (mosquitto 2 with MQTT 5 forced, 3.1.1 forced
and the default, amqtt, a RabbitMQ node): the agent must come online, deliver
a press with every contract field, deliver presses made during a broker
outage in order, and leave its will when killed.  Only the broker changes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.interop.conftest import FIGURES, RunAgent, Validate
from tests.interop.targets import Target
from tests.interop.watch import Seen, Watcher, retained_on
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import eventually

pytestmark = [pytest.mark.interop, pytest.mark.broker]

OUTAGE_PRESSES = 10
OUTAGE_S = 10.0


def root(device: str) -> str:
    return f"campus/main/{device}"


def _check_link(target: Target, status: dict[str, Any]) -> None:
    """What the agent says it negotiated (optional status fields) must be what this broker offers."""
    link = status.get("link", {})
    assert link.get("connected_since") is not None, f"{target.name}: online but not connected? {link}"
    if "protocol" in link:
        assert str(link["protocol"]) == target.expect_protocol, f"{target.name}: agent negotiated {link}"
    if "retain" in link:
        assert link["retain"] is True, f"{target.name} supports retain, the agent says not: {link}"


def test_online_status_seen_by_a_subscriber(
    live_target: Target, run_agent: RunAgent, device: str, validate: Validate
) -> None:
    t = live_target
    topic = f"{root(device)}/status"
    with Watcher(t.port, (topic,), **t.watcher_args()) as w:
        agent = run_agent(t, device=device)
        msg = w.wait_for(lambda m: _state(m, topic) == "online", timeout=30, what="online status")
    doc = validate("status", msg.doc)
    assert (doc["site"], doc["device"]) == ("main", device)
    _check_link(t, agent.status()["status"])  # the live document: the birth status may predate the link facts
    # "connected" only on a good CONNACK: a refused or unanswered MQTT 5 attempt before it is not a session
    connected = [ln for ln in agent.log.read_text().splitlines() if "connected to broker" in ln]
    assert len(connected) == 1, f"{t.name}: one session expected, the agent log says {connected}"
    # A central that starts later still learns the device is online: the retained status, asked
    # for on the exact topic (RabbitMQ gives retained messages only there) of the node the agent uses.
    broker = agent.status()["link"]["broker"]
    port = int(broker.rsplit(":", 1)[1])
    kept = retained_on(port, topic, **t.watcher_args())
    assert kept is not None, f"{t.name}: no retained status on {topic}"
    assert validate("status", kept)["state"] == "online"


def test_press_delivered_with_all_contract_fields(
    live_target: Target, run_agent: RunAgent, device: str, validate: Validate
) -> None:
    t = live_target
    with Watcher(t.port, (f"{root(device)}/event/#",), **t.watcher_args()) as w:
        agent = run_agent(t, device=device)
        agent.click()
        [(msg, doc)] = w.wait_events(1, timeout=30)
    validate("event", doc)
    assert msg.topic == f"{root(device)}/event/panic"
    assert (doc["site"], doc["device"], doc["type"], doc["source"], doc["test"]) == (
        "main",
        device,
        "panic",
        "panic",
        False,
    )
    assert doc["data"] == {"pin": 17, "contact": "normally_open"}
    assert doc["id"] in {e["id"] for e in agent.recent()}


def test_presses_during_outage_all_delivered_in_order(
    live_target: Target, run_agent: RunAgent, device: str, validate: Validate
) -> None:
    """10 presses during a 10 s broker outage arrive after it, all of them, in seq order.

    The agent reaches the broker through a pass-through TCP gate.  The broker is
    stopped (the agent's link drops as the broker closes it), the gate then
    refuses connections like the dead broker did, and after the broker is back
    the gate opens only once the watcher listens again: a consumer that was not
    subscribed cannot see events the agent delivered before it, and no broker
    here keeps a subscriber's session across a restart.
    """
    t = live_target
    if len(t.ports) > 1:
        pytest.skip("a cluster's outage is the node-kill failover test")
    gate = FaultProxy(t.port).start()
    try:
        w = Watcher(t.port, (f"{root(device)}/event/#",), **t.watcher_args())
        try:
            agent = run_agent(t, ports=[gate.port], device=device)
            agent.click()
            w.wait_events(1, timeout=30)  # the link works before the outage
            subacks = w.subacks

            down_at = time.monotonic()
            t.stop()
            gate.set_down(True)
            eventually(lambda: not agent.status()["link"]["connected"], 15, "the agent to notice the outage")
            for i in range(OUTAGE_PRESSES):
                agent.click()
                # the presses are spread over the outage's OUTAGE_S: the sleep is the outage itself
                time.sleep(max(0.0, down_at + (i + 1) * OUTAGE_S / OUTAGE_PRESSES - time.monotonic()))
            recorded = agent.wait_recorded(1 + OUTAGE_PRESSES, timeout=10)
            assert len(w.first_seen()) == 1, "events arrived while the broker was down"

            t.start()
            w.wait_subscribed(subacks + 1, timeout=60)
            gate.set_down(False)
            up_at = time.monotonic()
            got = w.wait_events(1 + OUTAGE_PRESSES, timeout=60)
        finally:
            w.close()
    finally:
        gate.stop()

    seqs = [d["seq"] for _, d in got]
    assert seqs == sorted(seqs), f"{t.name}: first-seen order is not seq order: {seqs}"
    assert {d["id"] for _, d in got} == {e["id"] for e in recorded}
    for _, d in got:
        validate("event", d)
    drained = max(m.at for m, _ in got) - up_at
    FIGURES.append(
        f"{t.name}: outage {up_at - down_at:.1f} s, {OUTAGE_PRESSES} presses delivered in order "
        f"{drained:.2f} s after the broker was reachable again"
    )


def test_will_on_sigkill(live_target: Target, run_agent: RunAgent, device: str, validate: Validate) -> None:
    t = live_target
    if not t.will:
        pytest.skip(f"{t.name} does not publish wills")
    topic = f"{root(device)}/status"
    with Watcher(t.port, (topic,), **t.watcher_args()) as w:
        agent = run_agent(t, device=device)
        w.wait_for(lambda m: _state(m, topic) == "online", timeout=30, what="online status")
        agent.kill()
        msg = w.wait_for(lambda m: _state(m, topic) == "offline", timeout=30, what="the will")
    doc = validate("status", msg.doc)
    assert (doc["device"], doc["reason"]) == (device, "lost")


def _state(m: Seen, topic: str) -> str | None:
    """The status state of a message on ``topic`` (brokers may hand a new subscriber strays: see amqtt)."""
    doc = m.doc if m.topic == topic else None
    return doc.get("state") if isinstance(doc, dict) else None
