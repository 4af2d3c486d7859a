"""The technician's commands against a running agent process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.agentproc import AgentFactory, run_cli, write_config
from tests.support.broker import Broker
from tests.support.contract import Validate
from tests.support.mqtt import Central
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def test_status__text_and_json(broker: Broker, agent_proc: AgentFactory, device: str) -> None:
    agent = agent_proc(broker.port, device=device)
    eventually(lambda: agent.status()["link"]["connected"], what="the agent to connect")
    agent.click()
    agent.wait_recorded(1)
    r = run_cli("status", "-c", str(agent.config))
    assert r.returncode == 0, r.stderr
    assert f"device   main/{device}" in r.stdout
    assert f"link     connected to 127.0.0.1:{broker.port}" in r.stdout
    assert "input    panic" in r.stdout
    assert "panic" in r.stdout.split("event    ", 1)[1]
    r = run_cli("status", "-c", str(agent.config), "--json")
    doc = json.loads(r.stdout)
    assert doc["status"]["device"] == device
    assert doc["link"]["connected"] is True
    assert doc["recent_events"][0]["type"] == "panic"


def test_simulate__press_via_cli_reaches_central(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str
) -> None:
    agent = agent_proc(broker.port, device=device)
    assert run_cli("simulate", "press", "panic", "-c", str(agent.config)).returncode == 0
    assert run_cli("simulate", "release", "panic", "-c", str(agent.config)).returncode == 0
    central.wait_for(lambda m: m.topic.endswith("/event/panic"))


def test_simulate__unknown_input_is_refused(broker: Broker, agent_proc: AgentFactory, device: str) -> None:
    agent = agent_proc(broker.port, device=device)
    r = run_cli("simulate", "press", "desk", "-c", str(agent.config))
    assert r.returncode == 1
    assert "no input named 'desk'; configured: panic" in r.stderr


def test_test_mode__presses_carry_test_true(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str, validate: Validate
) -> None:
    agent = agent_proc(broker.port, device=device)
    r = run_cli("test-mode", "on", "--minutes", "5", "-c", str(agent.config))
    assert r.returncode == 0, r.stderr
    assert "test mode on until" in r.stdout
    agent.click()
    doc = central.wait_for(lambda m: m.topic.endswith("/event/panic")).doc
    validate("event", doc)
    assert doc["test"] is True
    # the event may be on the wire before the inputs thread notes the press
    st = eventually(
        lambda: (s := agent.status()["status"])["inputs"]["panic"]["last_test"] == doc["ts"] and s,
        what="status to show the test press",
    )
    assert st["test_mode_until"] is not None
    assert run_cli("test-mode", "off", "-c", str(agent.config)).returncode == 0
    agent.click()
    later = central.wait_for(lambda m: m.topic.endswith("/event/panic")).doc
    assert later["test"] is False


def test_run__second_agent_on_same_outbox_refused_before_it_touches_anything(
    broker: Broker, agent_proc: AgentFactory, device: str
) -> None:
    """It used to open the outbox, connect under the same client id and, turned away by the control
    socket, delete the running agent's socket on its way out: status then said no agent ran."""
    agent = agent_proc(broker.port, device=device)
    state = agent.config.parent / "agent-state.json"
    before = state.read_bytes() if state.exists() else None
    r = run_cli("run", "-c", str(agent.config))
    assert r.returncode == 1
    assert "another agent is already running on outbox" in r.stderr
    assert agent.proc is not None
    assert f"(pid {agent.proc.pid})" in r.stderr
    assert agent.socket.exists()
    assert run_cli("status", "-c", str(agent.config)).returncode == 0, "the running agent is still reachable"
    assert agent.status()["status"]["link"]["reconnects"] == 0, "its broker session was not taken over"
    assert (state.read_bytes() if state.exists() else None) == before, "nor its state file rewritten"


def test_run__second_agent_on_same_socket_refused_and_leaves_it(
    broker: Broker, agent_proc: AgentFactory, device: str, tmp_path: Path
) -> None:
    agent = agent_proc(broker.port, device=device)
    other = write_config(tmp_path / "other", broker.port, device=f"{device}-b", control={"socket": str(agent.socket)})
    r = run_cli("run", "-c", str(other))
    assert r.returncode == 1
    assert "another agent is already running on control socket" in r.stderr
    assert agent.socket.exists(), "the refused agent deleted the running agent's control socket"
    assert run_cli("status", "-c", str(agent.config)).returncode == 0
