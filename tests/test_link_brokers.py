"""The agent against brokers that are not a healthy MQTT 5 mosquitto.

A port that accepts TCP and never answers MQTT, brokers that speak no MQTT 5
(closing at the CONNECT as RabbitMQ 3.10 does, or answering 0x84/0x01),
mosquitto with retain switched off, and brokers that refuse the command
subscription or drop the session at it.  Each runs the agent as a process
against a real mosquitto, with a fake from ``tests/support/fakebroker.py``
in front where mosquitto cannot act the part.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import format_status
from agent.doctor.runner import Host, run_doctor
from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.contract import Validate
from tests.support.fakebroker import GateProxy, SilentBroker
from tests.support.mqtt import Central, Msg
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def brokers(*ports: int, **mqtt: Any) -> dict[str, Any]:
    return {"host": None, "port": None, "brokers": [{"host": "127.0.0.1", "port": p} for p in ports], **mqtt}


def link(agent: Any) -> dict[str, Any]:
    return dict(agent.status()["status"]["link"])


def is_status(pred: Callable[[dict[str, Any]], bool]) -> Callable[[Msg], bool]:
    return lambda m: m.topic.endswith("/status") and m.doc.get("state") == "online" and pred(m.doc)


# ---- failover: a connect counts only once the broker's CONNACK accepts it ----------------------


@pytest.mark.parametrize("hang_up", [False, True], ids=["never-answers", "hangs-up-at-connect"])
def test_link__first_broker_takes_tcp_but_no_mqtt__the_press_goes_via_the_second(
    broker: Broker, central: Central, device: str, agent_proc: AgentFactory, hang_up: bool
) -> None:
    connect_timeout, backoff_cap = 2.0, 1.0
    with SilentBroker(hang_up=hang_up) as dead:
        agent = agent_proc(
            0,
            device=device,
            mqtt=brokers(
                dead.port,
                broker.port,
                connect_timeout_s=connect_timeout,
                reconnect_min_s=0.2,
                reconnect_max_s=backoff_cap,
            ),
        )
        agent.click()
        central.wait_events(1, "panic", timeout=2 * (connect_timeout + backoff_cap))
        assert link(agent)["broker"] == f"127.0.0.1:{broker.port}"
        assert dead.accepted >= 1
    log = agent.log.read_text()
    assert f"connected to broker 127.0.0.1:{dead.port}" not in log, "connected is said only after a good CONNACK"
    stage = "closed by the broker before CONNACK" if hang_up else "no CONNACK within 2 s"
    assert f"broker 127.0.0.1:{dead.port} unreachable ({stage}" in log


# ---- protocol auto ----------------------------------------------------------------------------


@pytest.mark.parametrize("v5", ["close", "0x84", "0x01"])
def test_link__auto_falls_back_to_3_1_1_once_per_broker(
    broker: Broker, central: Central, device: str, agent_proc: AgentFactory, v5: str, validate: Validate
) -> None:
    with GateProxy(broker.port, v5=v5) as gate:
        agent = agent_proc(gate.port, device=device)  # mqtt.protocol defaults to auto
        agent.click()
        central.wait_events(1, "panic")
        st = central.wait_for(is_status(lambda d: d["link"].get("protocol") == "3.1.1"))
        validate("status", st.doc)
        gate.drop_all()
        eventually(lambda: link(agent)["reconnects"] >= 1 and agent.status()["link"]["connected"], 20.0, "reconnect")
        agent.click()
        central.wait_events(2, "panic")
        # a close is the broker's answer only when it repeats, and again once 3.1.1 got a CONNACK (the link is up)
        first = [5, 5, 4, 5, 4] if v5 == "close" else [5, 4]
        assert gate.connects[: len(first)] == first
        assert 5 not in gate.connects[len(first) :], (
            f"MQTT 5 tried again on a broker known not to speak it: {gate.connects}"
        )
    log = agent.log.read_text()
    assert log.count("does not speak MQTT 5") == 1
    assert "refusal visibility" in log


def test_link__auto_rechecks_mqtt5_once_at_a_broker_that_never_answers_it(
    broker: Broker, central: Central, device: str, agent_proc: AgentFactory
) -> None:
    fast = {"connect_timeout_s": 1, "reconnect_min_s": 0.2, "reconnect_max_s": 1}
    with GateProxy(broker.port, v5="silent") as gate:
        agent = agent_proc(gate.port, device=device, mqtt=fast)
        agent.click()
        central.wait_events(1, "panic", timeout=30)
        central.wait_for(is_status(lambda d: d["link"].get("protocol") == "3.1.1"))
        # silent; 3.1.1 answered, closed unused; silent again with the link known up; 3.1.1 kept
        assert gate.connects[:4] == [5, 4, 5, 4]
        gate.drop_all()
        eventually(lambda: link(agent)["reconnects"] >= 1 and agent.status()["link"]["connected"], 20.0, "reconnect")
        agent.click()
        central.wait_events(2, "panic")
        assert 5 not in gate.connects[4:], f"MQTT 5 tried again on a broker known not to answer it: {gate.connects}"
    log = agent.log.read_text()
    assert log.count("does not speak MQTT 5") == 1
    assert "again just after a CONNACK to the fallback" in log


def test_link__explicit_5_does_not_fall_back_and_says_why(
    broker: Broker, device: str, agent_proc: AgentFactory
) -> None:
    with GateProxy(broker.port, v5="0x84") as gate:
        agent = agent_proc(gate.port, device=device, mqtt={"protocol": 5})
        err = eventually(lambda: agent.status()["link"]["last_error"], 20.0, "a connect failure")
        assert err.startswith("CONNACK refused: Unsupported protocol version; the broker does not speak this MQTT")
        assert set(gate.connects) == {5}


# ---- retain switched off ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["auto", "3.1.1"])
def test_link__retainless_broker_events_and_status_flow(
    tmp_path: Path, device: str, agent_proc: AgentFactory, protocol: str, validate: Validate
) -> None:
    b = Broker(tmp_path / "no-retain", listener_extra="allow_anonymous true\nretain_available false\n").start()
    c = Central(b.port, topics=(f"campus/+/{device}/#",))
    try:
        agent = agent_proc(b.port, device=device, mqtt={"protocol": protocol})
        st = c.wait_for(is_status(lambda d: d["link"].get("retain") is False))
        validate("status", st.doc)
        assert st.doc["link"]["protocol"] == ("5" if protocol == "auto" else "3.1.1")
        for _ in range(3):
            agent.click()
        c.wait_events(3, "panic")
        if protocol == "auto":  # MQTT 5 says so in the CONNACK; 3.1.1 cannot be asked
            out = io.StringIO()
            run_doctor(agent.config, timeout_s=2.0, out=out, host=Host(clock_synced=lambda: True, systemctl=None))
            assert "retain unavailable" in out.getvalue()
        agent.kill()
        c.wait_for(lambda m: m.topic.endswith("/status") and m.doc.get("reason") == "lost")  # the will, unretained
    finally:
        c.close()
        b.stop()
    log = agent.log.read_text()
    assert log.count("does not support retained messages") == 1
    assert "check mqtt.username" not in log, "retain refused is not a credentials problem"


# ---- the command subscription --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["kill", "refuse"])
def test_link__command_subscription_refused_or_fatal_events_still_flow(
    broker: Broker, central: Central, device: str, agent_proc: AgentFactory, mode: str, validate: Validate
) -> None:
    with GateProxy(broker.port, subscribe=mode) as gate:
        agent = agent_proc(gate.port, device=device)
        for _ in range(5):
            agent.click()
        central.wait_events(5, "panic")
        words = "closed the connection at the subscription" if mode == "kill" else "refused the subscription"
        st = central.wait_for(is_status(lambda d: words in str(d["link"]["commands"].get("reason"))))
        validate("status", st.doc)
        assert st.doc["link"]["commands"]["available"] is False
        for _ in range(5):
            agent.click()
        central.wait_events(10, "panic")
        assert gate.subscribes >= 1
        assert "commands unavailable: " in format_status(agent.status())
