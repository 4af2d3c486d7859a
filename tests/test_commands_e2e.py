"""Commands from the centre through a real mosquitto to a real agent process."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands import NAMES
from tests.support.agentproc import AgentProc, run_cli, unique_id, write_config
from tests.support.broker import Broker
from tests.support.contract import Validate
from tests.support.mqtt import Central
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


class Rig:
    def __init__(self, agent: AgentProc, central: Central, device: str) -> None:
        self.agent = agent
        self.central = central
        self.root = f"campus/main/{device}"

    def command(self, name: str, payload: bytes | str) -> None:
        self.central.publish(f"{self.root}/cmd/{name}", payload)

    def reply_to(self, cmd_id: str, timeout: float = 10.0) -> dict[str, Any]:
        reply: dict[str, Any] = self.central.wait_for(
            lambda m: m.topic == f"{self.root}/reply" and m.doc.get("cmd_id") == cmd_id, timeout
        ).doc
        return reply

    def press_delivered(self) -> dict[str, Any]:
        self.agent.click()
        event: dict[str, Any] = self.central.wait_for(lambda m: m.topic == f"{self.root}/event/panic").doc
        return event


def _rig(broker: Broker, workdir: Path) -> Iterator[Rig]:
    device = unique_id("cmd")
    central = Central(broker.port, topics=(f"campus/main/{device}/#",))
    cfg = write_config(
        workdir,
        broker.port,
        device=device,
        outputs={"ack_led": {"pin": 22}, "buzzer": {"pin": 23}},
        commands={"rate_per_min": 6000},
    )
    agent = AgentProc(cfg).start()
    try:
        central.wait_for(lambda m: m.topic.endswith("/status") and m.doc.get("state") == "online")
        yield Rig(agent, central, device)
    finally:
        agent.cleanup()
        central.close()


@pytest.fixture
def rig(broker: Broker, tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(broker, tmp_path)


def cmd(**fields: Any) -> tuple[str, bytes]:
    cid = f"c-{uuid.uuid4().hex[:8]}"
    return cid, json.dumps({"v": 1, "id": cid, **fields}).encode()


def test_ack__delivered_event_gives_ok_and_acknowledged_pattern(rig: Rig, validate: Validate) -> None:
    event = rig.press_delivered()
    cid, payload = cmd(event_id=event["id"])
    rig.command("ack", payload)
    reply = validate("reply", rig.reply_to(cid))
    assert reply["ok"] is True
    assert reply["error"] is None
    outputs = rig.agent.status()["status"]["outputs"]
    assert outputs["ack_led"]["pattern"] == "acknowledged"


def test_ack__unknown_event_is_refused_with_reason(rig: Rig, validate: Validate) -> None:
    cid, payload = cmd(event_id="0" * 32)
    rig.command("ack", payload)
    reply = validate("reply", rig.reply_to(cid))
    assert reply["ok"] is False
    assert "unknown event" in reply["error"]


def test_ping__fresh_status_at_once(rig: Rig, validate: Validate) -> None:
    before = time.monotonic()
    cid, payload = cmd()
    rig.command("ping", payload)
    assert rig.reply_to(cid)["ok"] is True
    status = rig.central.wait_for(lambda m: m.topic.endswith("/status") and m.at > before, timeout=5)
    validate("status", status.doc)
    assert status.at - before < 3.0, "a ping must not wait for the next heartbeat (30 s)"


def test_test_mode__command_makes_presses_tests(rig: Rig, validate: Validate) -> None:
    cid, payload = cmd(minutes=10)
    rig.command("test_mode", payload)
    assert rig.reply_to(cid)["ok"] is True
    doc = validate("event", rig.press_delivered())
    assert doc["test"] is True
    cid, payload = cmd(minutes=0)
    rig.command("test_mode", payload)
    assert rig.reply_to(cid)["ok"] is True
    assert rig.press_delivered()["test"] is False


HOSTILE = [
    ("wrong_version", "ping", json.dumps({"v": 2, "id": "h1"}), "h1", "unsupported version"),
    ("unknown_name", "reboot", json.dumps({"v": 1, "id": "h2"}), "h2", "unknown command 'reboot'"),
    ("minutes_out_of_range", "test_mode", json.dumps({"v": 1, "id": "h3", "minutes": 999}), "h3", "0-240"),
    ("minutes_bool", "test_mode", json.dumps({"v": 1, "id": "h4", "minutes": True}), "h4", "minutes"),
    ("event_id_missing", "ack", json.dumps({"v": 1, "id": "h5"}), "h5", "event_id"),
    ("oversized", "ping", json.dumps({"v": 1, "id": "h6", "pad": "x" * 5000}), "h6", "the limit is 4096"),
    ("deep_nesting", "ping", '{"v": 1, "id": "h7", "x": ' + "[" * 50 + "]" * 50 + "}", "h7", "nesting too deep"),
    ("not_json", "ping", "hello", None, None),
    ("not_utf8", "ping", b"\xff\xfe\x00", None, None),
    ("json_array", "ping", "[1, 2, 3]", None, None),
    ("recursion_bomb", "ping", "[" * 4000, None, None),
]


@pytest.mark.parametrize(("name", "payload", "cid", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile__answered_when_id_readable_and_agent_keeps_working(
    rig: Rig, validate: Validate, name: str, payload: str | bytes, cid: str | None, reason: str | None
) -> None:
    rig.command(name, payload)
    if cid is not None:
        reply = validate("reply", rig.reply_to(cid))
        assert reply["ok"] is False
        assert reason in reply["error"]
    ok_id, ping = cmd()
    rig.command("ping", ping)
    assert rig.reply_to(ok_id)["ok"] is True
    assert rig.press_delivered()["type"] == "panic"
    assert rig.agent.status()["status"]["commands"]["rejected"] >= 1
    assert rig.agent.proc is not None
    assert rig.agent.proc.poll() is None


@pytest.fixture(scope="module")
def module_rig(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from _rig(broker, tmp_path_factory.mktemp("fuzz"))


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_val = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20
)
payloads = st.one_of(
    st.binary(max_size=6000),
    st.text(max_size=200).map(str.encode),
    json_val.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"v": st.sampled_from([1, 2, "1", None]), "id": st.text(max_size=40)},
        optional={"minutes": json_val, "event_id": json_val},
    ).map(lambda d: json.dumps(d).encode()),
    st.integers(1, 20_000).map(lambda n: b"[" * n),
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(sorted(NAMES)) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", max_size=12), payload=payloads
)
def test_fuzz__agent_survives_anything_on_every_command_topic(module_rig: Rig, name: str, payload: str | bytes) -> None:
    if not name:
        name = "x"
    module_rig.command(name, payload)
    assert module_rig.agent.proc is not None
    assert module_rig.agent.proc.poll() is None


def test_fuzz__afterwards_ping_and_press_still_work(module_rig: Rig) -> None:
    # The fuzz may have emptied the rate limiter's bucket: a ping is then refused "rate limited"
    # until it refills (10 ms per command at 6000 a minute), which is the design.
    def ping_answered() -> bool:
        ok_id, ping = cmd()
        module_rig.command("ping", ping)
        try:
            reply = module_rig.reply_to(ok_id, timeout=2)
        except TimeoutError:  # refused without a reply: the flood's reply budget is spent
            return False
        assert reply["ok"] or "rate limited" in reply["error"], reply
        return bool(reply["ok"])

    # interval: one ping per 0.2 s lets the bucket refill between tries
    eventually(ping_answered, 15.0, "a ping answered once the rate limiter refilled", interval=0.2)
    assert module_rig.press_delivered()["type"] == "panic"


def test_cli_ack__real_agent_answers_and_shows_acknowledged(rig: Rig, broker: Broker) -> None:
    event = rig.press_delivered()
    device = rig.root.split("/", 1)[1]
    r = run_cli("ack", event["id"], "--device", device, "--broker", f"127.0.0.1:{broker.port}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert rig.agent.status()["status"]["outputs"]["ack_led"]["pattern"] == "acknowledged"
