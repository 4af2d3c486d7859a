"""Hostile or stale commands through a real mosquitto to the agent as a process.

Issue 9.2 (retained command), 14.4 (replayed ack), 14.9 (a flood does not lock out a genuine command).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.agentproc import AgentProc, unique_id, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.waiting import eventually
from tests.test_commands_e2e import Rig, cmd

pytestmark = pytest.mark.broker


def _agent(broker: Broker, tmp_path: Path, device: str, **extra: Any) -> AgentProc:
    cfg = write_config(
        tmp_path / device, broker.port, device=device, outputs={"ack_led": {"pin": 22}, "buzzer": {"pin": 23}}, **extra
    )
    return AgentProc(cfg)


def _pattern(agent: AgentProc) -> str:
    return str(agent.status()["status"]["outputs"]["ack_led"]["pattern"])


def test_retained_test_mode_is_not_applied_on_connect(broker: Broker, tmp_path: Path) -> None:
    device = unique_id("ret")
    root = f"campus/main/{device}"
    central = Central(broker.port, topics=(f"{root}/#",))
    agent = _agent(broker, tmp_path, device)
    try:
        central.publish(f"{root}/cmd/test_mode", json.dumps({"v": 1, "id": "left-behind", "minutes": 240}), retain=True)
        agent.start()
        reply = central.wait_for(lambda m: m.topic == f"{root}/reply").doc
        assert reply["cmd_id"] == "left-behind"
        assert reply["ok"] is False
        assert reply["error"].startswith("retained commands are never obeyed")
        agent.click()
        event = central.wait_for(lambda m: m.topic == f"{root}/event/panic").doc
        assert event["test"] is False
        assert agent.status()["status"]["test_mode_until"] is None
    finally:
        central.publish(f"{root}/cmd/test_mode", b"", retain=True)  # clear it from the shared broker
        agent.cleanup()
        central.close()


def test_replayed_ack_neither_answers_ok_nor_hides_a_newer_alarm(broker: Broker, tmp_path: Path) -> None:
    device = unique_id("rep")
    central = Central(broker.port, topics=(f"campus/main/{device}/#",))
    agent = _agent(broker, tmp_path, device).start()
    rig = Rig(agent, central, device)
    try:
        central.wait_for(lambda m: m.topic.endswith("/status") and m.doc.get("state") == "online")
        e1 = rig.press_delivered()
        cid, ack_e1 = cmd(event_id=e1["id"])
        rig.command("ack", ack_e1)
        assert rig.reply_to(cid)["ok"] is True
        assert _pattern(agent) == "acknowledged"

        e2 = rig.press_delivered()
        assert e2["id"] != e1["id"]
        rig.command("ack", ack_e1)  # byte-identical replay of the old ack
        replay = rig.central.wait_for(lambda m: m.topic == f"{rig.root}/reply" and m.doc.get("cmd_id") == cid).doc
        assert replay["ok"] is False
        assert replay["error"].startswith(f"repeated command id: '{cid}' was already handled")
        late_id, late_ack = cmd(event_id=e1["id"])  # a fresh, late ack of the older alarm
        rig.command("ack", late_ack)
        assert rig.reply_to(late_id)["ok"] is True
        assert _pattern(agent) == "sent", "an ack of e1 must not show 'acknowledged' while e2 is unanswered"

        cid2, ack_e2 = cmd(event_id=e2["id"])
        rig.command("ack", ack_e2)
        assert rig.reply_to(cid2)["ok"] is True
        assert _pattern(agent) == "acknowledged"
    finally:
        agent.cleanup()
        central.close()


def test_command_flood_does_not_lock_out_a_genuine_command(broker: Broker, tmp_path: Path) -> None:
    device = unique_id("fld")
    central = Central(broker.port, topics=(f"campus/main/{device}/#",))
    agent = _agent(broker, tmp_path, device, commands={"rate_per_min": 60}).start()
    rig = Rig(agent, central, device)
    try:
        central.wait_for(lambda m: m.topic.endswith("/status") and m.doc.get("state") == "online")
        for i in range(2000):
            central.publish(f"{rig.root}/cmd/ping", json.dumps({"v": 1, "id": f"flood-{i}"}), qos=0)
        eventually(
            lambda: agent.status()["status"]["commands"]["rejected"] >= 1900,
            30,
            lambda: f"the flood to be refused by the rate limit: {agent.status()['status']['commands']}",
        )
        cid, payload = cmd(minutes=0)
        rig.command("test_mode", payload)
        assert rig.reply_to(cid, timeout=15)["ok"] is True
    finally:
        agent.cleanup()
        central.close()
