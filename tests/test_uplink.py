"""The uplink against a real mosquitto: order, PUBACK-only deletes, refusals, reconnects."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho_client
import pytest

from agent import session
from agent.outbox import Outbox
from agent.session import MAX_PACKET_SIZE
from agent.uplink import Uplink
from tests.support.broker import Broker, free_port
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import Central
from tests.support.uplinkrig import RigFactory, mqtt_cfg
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def test_uplink__delivers_in_seq_order_and_deletes_on_puback(
    broker: Broker, central: Central, device: str, rig_factory: RigFactory
) -> None:
    rig = rig_factory(mqtt_cfg(broker.port, client_id=device), device)
    ids = rig.put(50)
    rig.uplink.start()
    got = central.wait_events(50)
    assert [d["id"] for d in got] == ids
    eventually(lambda: rig.outbox.pending() == 0, what="outbox to empty after PUBACKs")
    assert rig.delivered == sorted(rig.delivered)
    assert len(rig.delivered) == 50  # sorted() alone also holds for an empty list
    assert rig.uplink.state().delivered == 50


def test_uplink__pacing_limits_the_drain_rate(
    broker: Broker, central: Central, device: str, rig_factory: RigFactory
) -> None:
    rig = rig_factory(mqtt_cfg(broker.port, client_id=device, drain_rate_per_s=50.0, max_inflight=5), device)
    rig.put(40)
    rig.uplink.start()
    eventually(lambda: rig.uplink.state().connected, what="connect")
    t0 = time.monotonic()
    central.wait_events(40, timeout=20)
    elapsed = time.monotonic() - t0
    assert elapsed >= (40 - 5) / 50 * 0.8, f"drained 40 events in {elapsed:.2f} s at 50/s"


def test_uplink__refused_publish_is_not_a_delivery(tmp_path: Path, rig_factory: RigFactory) -> None:
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


def test_uplink__link_drop_mid_stream_resends_everything_unacked(
    broker: Broker, central: Central, device: str, rig_factory: RigFactory
) -> None:
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


def test_uplink__fails_over_to_the_next_broker(
    broker: Broker, central: Central, device: str, rig_factory: RigFactory
) -> None:
    dead = free_port()
    rig = rig_factory(mqtt_cfg(dead, broker.port, client_id=device), device)
    ids = rig.put(5)
    rig.uplink.start()
    assert [d["id"] for d in central.wait_events(5)] == ids
    assert rig.uplink.state().broker == f"127.0.0.1:{broker.port}"


def test_uplink__clean_stop_publishes_shutdown(broker: Broker, device: str, rig_factory: RigFactory) -> None:
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


def test_uplink__dead_network_thread_is_a_lost_link(
    broker: Broker, central: Central, device: str, rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def test_uplink__commands_over_the_max_packet_size_never_reach_the_agent(
    broker: Broker, central: Central, device: str, rig_factory: RigFactory
) -> None:
    """MQTT 5 Maximum Packet Size at CONNECT: the broker drops a command too big for the device."""
    rig = rig_factory(mqtt_cfg(broker.port, client_id=device), device)
    rig.uplink.start()
    eventually(lambda: rig.uplink.state().commands_available, what="the command subscription")
    central.publish(f"{rig.root}/cmd/huge", b"x" * (MAX_PACKET_SIZE + 1))
    central.publish(f"{rig.root}/cmd/small", b"{}")
    eventually(lambda: any(c[0] == "small" for c in rig.commands), what="the small command")
    assert [c[0] for c in rig.commands] == ["small"]


def test_uplink__passes_the_retain_flag_of_commands(
    broker: Broker, central: Central, device: str, rig_factory: RigFactory
) -> None:
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


def test_uplink__connected_since_follows_a_clock_step(broker: Broker, tmp_path: Path, device: str) -> None:
    """Kept on the wall clock of the connect, it stayed hours off after NTP stepped a Pi's clock."""
    offset = [0.0]
    ob = Outbox(tmp_path / "outbox.db", site="main", device=device)
    up = Uplink(
        mqtt_cfg(broker.port, client_id=f"main/{device}"),
        topic_root=f"campus/main/{device}",
        outbox=ob,
        status=lambda: {"v": 1, "state": "online"},
        offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
        wall=lambda: time.time() + offset[0],
    )
    try:
        up.start()
        eventually(lambda: up.state().connected, what="connected")
        since = up.state().connected_since
        assert since is not None
        offset[0] = 3 * 86400.0  # NTP puts the clock three days ahead
        stepped = up.state().connected_since
        assert stepped is not None
        assert stepped - since == pytest.approx(3 * 86400.0, abs=1.0)
    finally:
        up.stop()
        ob.close()
