"""Issue 14.3 and 14.1 (broker side): the example broker binds identity end to end.

Black-box: mosquitto runs the shipped config/mosquitto/mosquitto.conf and
campus.acl; the agent runs as a process with its own certificate.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.security.conftest import ROOT, Client, ExampleBroker, device_config
from tests.support.agentproc import AgentProc
from tests.support.broker import Broker
from tests.support.certs import Issued
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def start_agent(
    agent_proc: Callable[..., AgentProc], broker: ExampleBroker, pki: dict[str, Issued], **extra: Any
) -> AgentProc:
    agent = agent_proc(broker.port, device="gate-north-1", mqtt=device_config(pki, broker.port), **extra)
    eventually(lambda: agent.status()["link"]["connected"], 15, lambda: "the agent to connect\n" + broker.log)
    return agent


def test_identity__another_devices_certificate_cannot_knock_a_device_off(
    example_broker: ExampleBroker, pki: dict[str, Issued], agent_proc: Callable[..., AgentProc]
) -> None:
    central = Client(example_broker, "central", topics=("campus/#",))
    agent = start_agent(agent_proc, example_broker, pki)
    try:
        for stolen_id in ("main/gate-north-1", "main-gate-north-1", "gate-north-1"):
            for _ in range(4):
                thief = Client(example_broker, "gate-north-2", client_id=stolen_id)
                thief.close()
        agent.click()
        before = central.until("campus/main/gate-north-1/event/panic", timeout=15)
        offline = [m for m in before if m[0] == "campus/main/gate-north-1/status" and b'"offline"' in m[1]]
        assert offline == [], "a forged takeover published the device's will"
        status = agent.status()
        assert status["link"]["connected"]
        assert status["status"]["link"]["reconnects"] == 0, example_broker.log
    finally:
        central.close()


def test_identity__a_device_cannot_write_under_another_site_device_or_command_topic(
    example_broker: ExampleBroker,
) -> None:
    central = Client(example_broker, "central", topics=("campus/#",))
    rogue = Client(example_broker, "gate-north-2")
    try:
        for topic in (
            "campus/other/gate-north-2/event/panic",
            "campus/main/gate-north-1/event/panic",
            "campus/main/gate-north-1/status",
            "campus/main/gate-north-2/cmd/test_mode",
            "campus/main/gate-north-2/doctor/ping",
            "campus/main/gate-north-1/doctor/ping",
        ):
            assert rogue.pub(topic, b'{"forged": true}') == 135, topic  # MQTT 5: Not authorized
        assert rogue.pub("campus/main/gate-north-2/event/panic", b"sentinel") == 0
        assert central.until("campus/main/gate-north-2/event/panic") == []
    finally:
        rogue.close()
        central.close()


def test_identity__a_device_reads_only_its_own_commands(example_broker: ExampleBroker) -> None:
    central = Client(example_broker, "central")
    rogue = Client(example_broker, "gate-north-2", topics=("campus/+/+/cmd/#",))
    try:
        assert central.pub("campus/main/gate-north-1/cmd/test_mode", b"for gate-north-1") == 0
        assert central.pub("campus/main/gate-north-2/cmd/ping", b"sentinel") == 0
        assert rogue.until("campus/main/gate-north-2/cmd/ping") == []
    finally:
        rogue.close()
        central.close()


def test_identity__doctor_round_trip_uses_its_own_identity_and_leaves_the_agent_connected(
    example_broker: ExampleBroker, pki: dict[str, Issued], agent_proc: Callable[..., AgentProc]
) -> None:
    doc = pki["doctor-gate-north-1"]
    agent = start_agent(
        agent_proc, example_broker, pki, doctor={"cert_file": str(doc.cert_path), "key_file": str(doc.key_path)}
    )
    r = subprocess.run(
        [sys.executable, "-m", "agent", "doctor", "-c", str(agent.config), "--timeout", "5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    lines = r.stdout.splitlines()
    assert any(line.startswith("OK") and "round trip: published and received" in line for line in lines), r.stdout
    status = agent.status()
    assert status["link"]["connected"]
    assert status["status"]["link"]["reconnects"] == 0, "doctor's login took the agent's session over"


def test_identity__the_doctor_identity_cannot_send_events(example_broker: ExampleBroker) -> None:
    central = Client(example_broker, "central", topics=("campus/#",))
    doctor = Client(example_broker, "doctor-gate-north-1", topics=("campus/main/gate-north-1/doctor/#",))
    try:
        assert doctor.pub("campus/main/gate-north-1/event/panic", b"forged") == 135
        assert doctor.pub("campus/main/gate-north-1/doctor/ping", b"nonce") == 0
        assert doctor.until("campus/main/gate-north-1/doctor/ping") == []
    finally:
        doctor.close()
        central.close()


def test_example_broker__refuses_packets_over_its_limit(
    example_broker: ExampleBroker, pki: dict[str, Issued], agent_proc: Callable[..., AgentProc]
) -> None:
    agent = start_agent(agent_proc, example_broker, pki)
    sender = Client(example_broker, "central", topics=("campus/main/gate-north-1/reply",))
    big = json.dumps({"v": 1, "id": "big", "pad": "x" * 1_100_000}).encode()  # over max_packet_size (1 MiB)
    sender.c.publish("campus/main/gate-north-1/cmd/ping", big, qos=1)
    eventually(lambda: sender.disconnects, 15, "the broker to drop the client that sent 1.1 MB")
    sender.close()
    sender = Client(example_broker, "central", topics=("campus/main/gate-north-1/reply",))
    try:
        assert sender.pub("campus/main/gate-north-1/cmd/ping", json.dumps({"v": 1, "id": "small"})) == 0
        _topic, payload, _ = sender.msgs.get(timeout=15)
        assert json.loads(payload)["cmd_id"] == "small"
        assert agent.status()["status"]["commands"] == {"accepted": 1, "rejected": 0}
    finally:
        sender.close()


def test_example_files__bind_identity_and_limit_packets() -> None:
    conf = (ROOT / "config" / "mosquitto" / "mosquitto.conf").read_text()
    for line in (
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "require_certificate true",
        "allow_anonymous false",
        "max_packet_size 1048576",  # a default photo (snapshots.max_kb 400) fits; commands stop at 4 KiB
    ):
        assert f"\n{line}\n" in conf, line
    acl = (ROOT / "config" / "mosquitto" / "campus.acl").read_text()
    assert "+/%u" not in acl, "the site must come from the identity, not a wildcard"
    assert "pattern write campus/%u/event/#" in acl


def test_identity__the_same_acl_works_with_passwords_named_site_slash_id(tmp_path: Path) -> None:
    """docs/install.md: a password broker uses user names {site}/{id}; '/' in %u must work in the ACL."""
    pw = tmp_path / "passwd"
    pw.touch()
    pw.chmod(0o600)
    for user in ("main/gate-north-2", "central"):
        subprocess.run(
            ["mosquitto_passwd", "-b", str(pw), user, "pw-" + user.replace("/", "-")], check=True, capture_output=True
        )
    b = Broker(
        tmp_path / "pw",
        listener_extra=(
            f"allow_anonymous false\npassword_file {pw}\n"
            f"use_username_as_clientid true\n"
            f"acl_file {ROOT / 'config' / 'mosquitto' / 'campus.acl'}\n"
        ),
    ).start()
    got: queue.Queue[str] = queue.Queue()
    acks: queue.Queue[int] = queue.Queue()

    def client(user: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="x", protocol=MQTTProtocolVersion.MQTTv5)
        c.username_pw_set(user, "pw-" + user.replace("/", "-"))
        c.on_message = lambda _c, _u, m: got.put(m.topic)
        c.on_publish = lambda _c, _u, _m, rc, _p: acks.put(int(rc.value))
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        return c

    central = client("central")
    device = client("main/gate-north-2")
    try:
        subscribed = queue.Queue[int]()
        central.on_subscribe = lambda *_a: subscribed.put(1)
        central.subscribe("campus/#", qos=1)
        subscribed.get(timeout=10)
        device.publish("campus/main/gate-north-1/event/panic", b"forged", qos=1)
        assert acks.get(timeout=10) == 135
        device.publish("campus/main/gate-north-2/event/panic", b"sentinel", qos=1)
        assert acks.get(timeout=10) == 0
        assert got.get(timeout=10) == "campus/main/gate-north-2/event/panic"
    finally:
        for c in (central, device):
            c.disconnect()
            c.loop_stop()
        b.stop()
