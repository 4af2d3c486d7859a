"""The uplink against a real mosquitto: order, PUBACK-only deletes, refusals, reconnects."""

from __future__ import annotations

import logging
import random
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho_client
import pytest

from agent import session
from agent.config.model import BrokerAddress, MqttConfig
from agent.events import Clock, Event, EventType
from agent.outbox import Outbox
from agent.session import MAX_PACKET_SIZE
from agent.uplink import Uplink, backoff_delay, describe_connect_error
from tests.support.broker import Broker, free_port
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import Central
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker
CLOCK = Clock(synced=lambda: False, boot_id="b")


def mqtt_cfg(*ports: int, client_id: str, **kw: Any) -> MqttConfig:
    base: dict[str, Any] = {
        "brokers": tuple(BrokerAddress("127.0.0.1", p) for p in ports),
        "keepalive_s": 5,
        "topic_prefix": "campus",
        "client_id": client_id,
        "protocol": "5",
        "username": None,
        "password": None,
        "tls": None,
        "connect_timeout_s": 3.0,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "max_inflight": 10,
        "drain_rate_per_s": 10000.0,
    }
    base.update(kw)
    return MqttConfig(**base)


class Rig:
    """An Outbox + Uplink pair with fake status documents."""

    def __init__(self, tmp_path: Path, cfg: MqttConfig, device: str) -> None:
        self.root = f"campus/main/{device}"
        self.outbox = Outbox(tmp_path / f"{device}.db", site="main", device=device)
        self.delivered: list[int] = []
        self.commands: list[tuple[str, int, bool]] = []  # (name, payload size, retained)
        self.uplink = Uplink(
            cfg,
            topic_root=self.root,
            outbox=self.outbox,
            status=lambda: {"v": 1, "state": "online"},
            offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
            on_delivered=lambda row: self.delivered.append(row.seq),
            on_command=self._command,
        )

    def _command(self, name: str, payload: bytes, *, retained: bool = False) -> None:
        self.commands.append((name, len(payload), retained))

    def put(self, n: int, kind: EventType = EventType.PANIC) -> list[str]:
        ids = []
        for _ in range(n):
            e = Event.create(CLOCK, kind, "panic")
            self.outbox.put(e)
            ids.append(e.id)
        self.uplink.wake()
        return ids

    def close(self) -> None:
        self.uplink.stop()
        self.outbox.close()


@pytest.fixture
def rig_factory(tmp_path):
    rigs: list[Rig] = []

    def make(cfg: MqttConfig, device: str) -> Rig:
        r = Rig(tmp_path, cfg, device)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def test_uplink__delivers_in_seq_order_and_deletes_on_puback(broker, central, device, rig_factory):
    rig = rig_factory(mqtt_cfg(broker.port, client_id=device), device)
    ids = rig.put(50)
    rig.uplink.start()
    got = central.wait_events(50)
    assert [d["id"] for d in got] == ids
    eventually(lambda: rig.outbox.pending() == 0, what="outbox to empty after PUBACKs")
    assert rig.delivered == sorted(rig.delivered)
    assert rig.uplink.state().delivered == 50


def test_uplink__pacing_limits_the_drain_rate(broker, central, device, rig_factory):
    rig = rig_factory(mqtt_cfg(broker.port, client_id=device, drain_rate_per_s=50.0, max_inflight=5), device)
    rig.put(40)
    rig.uplink.start()
    eventually(lambda: rig.uplink.state().connected, what="connect")
    t0 = time.monotonic()
    central.wait_events(40, timeout=20)
    elapsed = time.monotonic() - t0
    assert elapsed >= (40 - 5) / 50 * 0.8, f"drained 40 events in {elapsed:.2f} s at 50/s"


def test_uplink__refused_publish_is_not_a_delivery(tmp_path, rig_factory):
    """MQTT 5: the ACL refuses the publish (PUBACK 135); paho calls it published, we keep the row."""
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    pw.touch()
    pw.chmod(0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "dev-a", "a-secret"], check=True)
    acl.write_text("user dev-a\ntopic write campus/main/dev-a/status\ntopic read campus/main/dev-a/cmd/#\n")
    b = Broker(tmp_path / "acl-broker", listener_extra=f"allow_anonymous false\npassword_file {pw}\nacl_file {acl}\n")
    b.start()
    try:
        secret = tmp_path / "p"
        secret.write_text("a-secret")
        from agent.config.model import Secret

        cfg = mqtt_cfg(b.port, client_id="dev-a", username="dev-a", password=Secret("a-secret", secret))
        rig = rig_factory(cfg, "dev-a")
        rig.put(1)
        rig.uplink.start()
        eventually(lambda: rig.uplink.state().refused >= 1, what="a refused PUBACK")
        assert rig.outbox.pending() == 1, "a refused event must stay in the outbox"
        assert rig.delivered == []
    finally:
        b.stop()


def test_uplink__link_drop_mid_stream_resends_everything_unacked(broker, central, device, rig_factory):
    proxy = FaultProxy(broker.port).start()
    try:
        rig = rig_factory(mqtt_cfg(proxy.port, client_id=device, drain_rate_per_s=200.0), device)
        rig.uplink.start()
        eventually(lambda: rig.uplink.state().connected, what="connect")
        ids = rig.put(100)
        central.wait_events(1)  # part of the stream is out: the cut comes mid-stream
        proxy.drop_all()
        got = central.wait_events(100, timeout=30)
        first_seen = list(dict.fromkeys(d["id"] for d in got))
        assert first_seen == ids, "lost or reordered across the reconnect"
        eventually(lambda: rig.outbox.pending() == 0, what="drain")
        assert rig.uplink.state().reconnects >= 1
    finally:
        proxy.stop()


def test_uplink__unreachable_broker_log_says_what_and_next(tmp_path, device, rig_factory, caplog):
    dead = free_port()
    rig = rig_factory(mqtt_cfg(dead, client_id=device), device)
    rig.put(3)
    with caplog.at_level(logging.WARNING, logger="agent.uplink"):
        rig.uplink.start()
        eventually(lambda: "unreachable" in caplog.text, what="a warning")
    line = next(r.getMessage() for r in caplog.records if "unreachable" in r.getMessage())
    assert f"broker 127.0.0.1:{dead} unreachable (TCP: connection refused); 3 events buffered; retrying in" in line


def test_uplink__fails_over_to_the_next_broker(broker, central, device, rig_factory):
    dead = free_port()
    rig = rig_factory(mqtt_cfg(dead, broker.port, client_id=device), device)
    ids = rig.put(5)
    rig.uplink.start()
    assert [d["id"] for d in central.wait_events(5)] == ids
    assert rig.uplink.state().broker == f"127.0.0.1:{broker.port}"


def test_uplink__clean_stop_publishes_shutdown(broker, device, rig_factory):
    c = Central(broker.port, topics=(f"campus/main/{device}/status",))
    try:
        rig = rig_factory(mqtt_cfg(broker.port, client_id=device), device)
        rig.uplink.start()
        c.wait_for(lambda m: m.doc.get("state") == "online")
        rig.uplink.stop()
        m = c.wait_for(lambda m: m.doc.get("state") == "offline")
        assert m.doc["reason"] == "shutdown"
    finally:
        c.close()


@pytest.mark.parametrize("attempt", [0, 1, 3, 10, 50])
def test_backoff_delay__full_jitter_within_cap(attempt):
    rng = random.Random(attempt)
    values = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(2000)]
    ceiling = min(60.0, 2.0**attempt)
    assert min(values) >= 0.0
    assert max(values) <= ceiling
    assert max(values) > ceiling * 0.9, "full jitter spans the whole range"
    assert len({round(v, 6) for v in values}) > 1900, "devices must not reconnect in lock-step"


def test_backoff_delay__two_devices_differ():
    a = [backoff_delay(3, 1, 60, random.Random(1)) for _ in range(1)]
    b = [backoff_delay(3, 1, 60, random.Random(2)) for _ in range(1)]
    assert a != b


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "host name not found (Name or service not known)"),
        (TimeoutError(), "no answer within 3 s"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS handshake failed"),
    ],
)
def test_describe_connect_error__words(exc, words):
    assert words in describe_connect_error(exc, 3.0)


def test_uplink__repr_close_and_context_manager(tmp_path):
    ob = Outbox(tmp_path / "o.db", site="s", device="d")
    dead = free_port()
    with Uplink(
        mqtt_cfg(dead, client_id="x"), topic_root="campus/s/d", outbox=ob, status=dict, offline=lambda r: {}
    ) as up:
        assert repr(up) == "<Uplink campus/s/d disconnected (connecting) inflight=0>"
        up.start()
        eventually(lambda: up.state().last_error, what="a failed attempt")
        assert "TCP: connection refused" in repr(up)
    assert repr(up) == "<Uplink campus/s/d closed>"
    up.close()  # idempotent
    up.start()  # a closed uplink stays closed
    assert not any(t.name == "uplink-sender" and t.is_alive() for t in threading.enumerate())
    ob.close()


def test_uplink__dead_network_thread_is_a_lost_link(broker, central, device, rig_factory, monkeypatch):
    """A MemoryError kills paho's network thread (issue 14): the link is lost and rebuilt, presses still go out."""
    real = paho_client.Client._handle_publish
    injected = threading.Event()

    def dies_once(self: paho_client.Client) -> Any:  # on the agent's clients only, not the test's central
        if not injected.is_set():
            injected.set()
            raise MemoryError("injected: reading a huge command")
        return real(self)

    monkeypatch.setattr(session._Client, "_handle_publish", dies_once)
    rig = rig_factory(mqtt_cfg(broker.port, client_id=device, max_inflight=5), device)
    rig.uplink.start()
    eventually(lambda: rig.uplink.state().commands_available, what="the command subscription")
    central.publish(f"{rig.root}/cmd/ping", b"{}")
    assert injected.wait(10)
    ids = rig.put(30)  # more than the window: a dead thread that reads no PUBACK would stall after 5
    got = central.wait_events(30)
    assert set(ids) <= {d["id"] for d in got}
    eventually(lambda: rig.outbox.pending() == 0, what="every row acknowledged")
    assert rig.uplink.state().reconnects >= 1


def test_uplink__commands_over_the_max_packet_size_never_reach_the_agent(broker, central, device, rig_factory):
    """MQTT 5 Maximum Packet Size at CONNECT: the broker drops a command too big for the device."""
    rig = rig_factory(mqtt_cfg(broker.port, client_id=device), device)
    rig.uplink.start()
    eventually(lambda: rig.uplink.state().commands_available, what="the command subscription")
    central.publish(f"{rig.root}/cmd/huge", b"x" * (MAX_PACKET_SIZE + 1))
    central.publish(f"{rig.root}/cmd/small", b"{}")
    eventually(lambda: any(c[0] == "small" for c in rig.commands), what="the small command")
    assert [c[0] for c in rig.commands] == ["small"]


def test_uplink__passes_the_retain_flag_of_commands(broker, central, device, rig_factory):
    rig = rig_factory(mqtt_cfg(broker.port, client_id=device), device)
    central.publish(f"{rig.root}/cmd/old", b"{}", retain=True)  # waiting on the broker before the agent comes
    try:
        rig.uplink.start()
        eventually(lambda: rig.commands, what="the retained command")
        central.publish(f"{rig.root}/cmd/new", b"{}")
        eventually(lambda: len(rig.commands) == 2, what="the live command")
        assert rig.commands == [("old", 2, True), ("new", 2, False)]
    finally:
        central.publish(f"{rig.root}/cmd/old", b"", retain=True)
