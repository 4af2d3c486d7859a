"""TLS, client certificates and the example ACL against a real mosquitto."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.agentproc import AgentProc, write_config
from tests.support.broker import Broker
from tests.support.certs import Issued, device_pki, issue
from tests.support.contract import Validate
from tests.support.mqtt import Central
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[1]
DEV = "gate-north-1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    return device_pki(tmp_path_factory.mktemp("pki"), DEV)


def tls_broker(tmp_path: Path, pki: dict[str, Issued], server: str = "server") -> Broker:
    """The example broker config's listener settings, with test paths and the shipped ACL file."""
    extra = (
        f"cafile {pki['ca'].cert_path}\ncertfile {pki[server].cert_path}\nkeyfile {pki[server].key_path}\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
        f"acl_file {ROOT / 'config' / 'mosquitto' / 'campus.acl'}\n"
    )
    return Broker(tmp_path / "tls-broker", listener_extra=extra).start()


@pytest.fixture
def broker_ok(tmp_path: Path, pki: dict[str, Issued]) -> Iterator[Broker]:
    b = tls_broker(tmp_path, pki)
    yield b
    b.stop()


def central_for(b: Broker, pki: dict[str, Issued], device: str = DEV) -> Central:
    return Central(
        b.port,
        topics=(f"campus/main/{device}/#",),
        ca_certs=str(pki["ca"].cert_path),
        certfile=str(pki["central"].cert_path),
        keyfile=str(pki["central"].key_path),
    )


def agent_cfg(
    tmp_path: Path,
    port: int,
    pki: dict[str, Issued],
    *,
    device: str = DEV,
    ca: str = "ca",
    cert: str = DEV,
    host: str = "127.0.0.1",
) -> Path:
    return write_config(
        tmp_path / "agent",
        port,
        device=device,
        mqtt={
            "host": host,
            "tls": {
                "ca_file": str(pki[ca].cert_path),
                "cert_file": str(pki[cert].cert_path),
                "key_file": str(pki[cert].key_path),
            },
        },
    )


def wait_log(agent: AgentProc, text: str, timeout: float = 15.0) -> str:
    """The agent's log, once it contains ``text``."""
    return eventually(
        lambda: log if text in (log := agent.log.read_text()) else None,
        timeout,
        lambda: f"{text!r} in the agent's log:\n{agent.log.read_text()[-3000:]}",
    )


def test_tls__mutual_tls_delivers(
    tmp_path: Path, pki: dict[str, Issued], broker_ok: Broker, validate: Validate
) -> None:
    central = central_for(broker_ok, pki)
    agent = AgentProc(agent_cfg(tmp_path, broker_ok.port, pki)).start()
    try:
        central.wait_for(lambda m: m.topic.endswith("/status") and m.doc["state"] == "online")
        agent.click()
        validate("event", central.wait_for(lambda m: m.topic.endswith("/event/panic")).doc)
    finally:
        agent.cleanup()
        central.close()


@pytest.mark.parametrize(
    ("case", "server", "ca", "words"),
    [
        ("wrong_ca", "server", "rogue-ca", "TLS certificate check failed"),
        ("expired_server_cert", "expired", "ca", "certificate has expired"),
        ("wrong_host", "otherhost", "ca", "mismatch, certificate is not valid for '127.0.0.1'"),
    ],
)
def test_tls__bad_server_is_refused_clearly_and_presses_still_recorded(
    tmp_path: Path, pki: dict[str, Issued], case: str, server: str, ca: str, words: str
) -> None:
    b = tls_broker(tmp_path, pki, server=server)
    agent = AgentProc(agent_cfg(tmp_path, b.port, pki, ca=ca)).start()
    try:
        log = wait_log(agent, "unreachable (TLS certificate check failed")
        assert words in log, log[-2000:]
        assert "retrying in" in log
        agent.click()
        recorded = agent.wait_recorded(1)
        assert recorded[0]["delivered"] is False
        st = agent.status()
        assert st["link"]["connected"] is False
        assert st["status"]["outbox"]["pending"] >= 2  # agent_started + the press, kept for later
    finally:
        agent.cleanup()
        b.stop()


@pytest.mark.parametrize("client", ["expired", "rogue"])
def test_tls__a_client_certificate_the_broker_refuses_is_named_not_taken_for_a_dialect(
    tmp_path: Path, pki: dict[str, Issued], broker_ok: Broker, client: str
) -> None:
    """Under TLS 1.3 the broker refuses the client certificate after the handshake, as an alert at the first read.

    paho reports that as a lost connection; the agent said "closed by the broker before CONNACK
    (MQTT 3.1.1: Unspecified error)" and walked its MQTT version fallbacks (a hunt found it).
    """
    certs = dict(pki)
    if client == "expired":
        certs["expired-client"] = issue(
            pki["ca"], tmp_path, f"main/{DEV}", "expired-client", server=False, days=-1, start_days_ago=3
        )
    name = "expired-client" if client == "expired" else "rogue"
    agent = AgentProc(agent_cfg(tmp_path, broker_ok.port, certs, cert=name)).start()
    try:
        log = wait_log(agent, "the broker ended TLS before CONNACK")
        assert "check the client certificate" in log
        assert "does not speak MQTT 5" not in log, "a certificate is not a dialect"
        assert "does not support retained messages" not in log
    finally:
        agent.cleanup()


class Device:
    """A bare paho client holding a device certificate (MQTT 5, to see PUBACK reason codes)."""

    def __init__(self, port: int, pki: dict[str, Issued], cn: str) -> None:
        self.acks: queue.Queue[Any] = queue.Queue()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{cn}-{uuid.uuid4().hex[:6]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.c.tls_set(
            ca_certs=str(pki["ca"].cert_path), certfile=str(pki[cn].cert_path), keyfile=str(pki[cn].key_path)
        )
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.put(rc)
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def pub(self, topic: str, payload: bytes) -> Any:
        self.c.publish(topic, payload, qos=1)
        return self.acks.get(timeout=10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_acl__device_cannot_publish_under_another_devices_root(
    tmp_path: Path, pki: dict[str, Issued], broker_ok: Broker
) -> None:
    central = Central(
        broker_ok.port,
        topics=("campus/#",),
        ca_certs=str(pki["ca"].cert_path),
        certfile=str(pki["central"].cert_path),
        keyfile=str(pki["central"].key_path),
    )
    dev = Device(broker_ok.port, pki, DEV)
    try:
        rc = dev.pub("campus/main/gate-south-2/event/panic", b'{"forged": true}')
        assert rc.is_failure
        assert rc.value == 135  # Not authorized
        dev.pub(f"campus/main/{DEV}/event/panic", b'{"sentinel": true}')
        before = []
        while True:  # a subscriber sees one publisher's messages in order: anything forged comes first
            m = central.msgs.get(timeout=10)
            if m.topic == f"campus/main/{DEV}/event/panic":
                break
            before.append(m.topic)
        assert "campus/main/gate-south-2/event/panic" not in before
        with pytest.raises(queue.Empty):
            while True:
                if central.msgs.get(timeout=0.5).topic.startswith("campus/main/gate-south-2"):
                    break
    finally:
        dev.close()
        central.close()


def test_acl__agent_with_someone_elses_id_keeps_its_events(
    tmp_path: Path, pki: dict[str, Issued], broker_ok: Broker
) -> None:
    """The broker refuses (MQTT 5 PUBACK 135): the events stay in the outbox, counted as refused."""
    agent = AgentProc(agent_cfg(tmp_path, broker_ok.port, pki, device="gate-south-2", cert=DEV)).start()
    try:
        agent.click()
        st = eventually(lambda: (s := agent.status())["link"]["refused"] >= 1 and s, 15.0, "a refused PUBACK")
        assert st["status"]["outbox"]["pending"] >= 1
        assert "broker refused" in agent.log.read_text()
    finally:
        agent.cleanup()


def test_tls__certificate_expiring_soon_warns_in_status(
    tmp_path: Path, pki: dict[str, Issued], broker_ok: Broker, validate: Validate
) -> None:
    agent = AgentProc(agent_cfg(tmp_path, broker_ok.port, pki, cert="soon")).start()
    try:
        warnings = agent.status()["status"]["warnings"]
        assert any("expires on" in w and "renew" in w for w in warnings), warnings
        validate("status", agent.status()["status"])
        assert "expires on" in agent.log.read_text()
    finally:
        agent.cleanup()
