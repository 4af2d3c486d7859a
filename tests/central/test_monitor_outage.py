"""The monitor's own link drops (a FaultProxy between it and a real mosquitto) while the fleet carries on."""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.central.monitor import Target
from tests.central.test_monitor import MonitorRun, col, enc, event, monitor, offline, status, topic
from tests.support.broker import Broker
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import Central
from tests.support.waiting import eventually, never

__all__ = ["monitor"]  # the fixture, imported for the tests below

_HEADER = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{3}  (NOT CONNECTED since \d\d:\d\d:\d\d, figures stale; )?\d+ devices?:", re.MULTILINE
)


@pytest.fixture
def proxy(broker: Broker) -> Iterator[FaultProxy]:
    p = FaultProxy(broker.port).start()
    yield p
    p.stop()


@pytest.fixture
def clear_status(central: Central, device: str) -> Iterator[None]:
    """The shared broker keeps retained statuses: start and end without this device's."""
    central.publish(topic("status", device), b"", retain=True)
    yield
    central.publish(topic("status", device), b"", retain=True)


class _Heartbeats:
    """A device heartbeating every 0.25 s (retained, fresh ``ts``) on its own thread, at most 400 times."""

    def __init__(self, central: Central, device: str) -> None:
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(central, device), daemon=True)
        self._thread.start()

    def _beat(self, central: Central, device: str) -> None:
        for _ in range(400):
            central.publish(topic("status", device), enc(status(device, ts=time.time())), retain=True)
            self.sent += 1
            if self._stop.wait(0.25):
                return

    def wait_beats(self, n: int) -> None:
        """Wait until ``n`` more statuses are out: the device kept beating that long."""
        target = self.sent + n
        eventually(lambda: self.sent >= target, 30, f"{n} more heartbeats")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _client_id(run: MonitorRun) -> str:
    found = re.search(r" as (monitor-[0-9a-f]{12}) ", run.err.getvalue())
    assert found, run.err.getvalue()
    return found.group(1)


def _session_present(port: int, client_id: str, *, v5: bool) -> bool:
    """Connect with ``client_id`` asking to resume its session: does the broker still hold one?"""
    got: queue.Queue[bool] = queue.Queue()
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else False,
    )
    c.on_connect = lambda _c, _u, flags, _rc, _p: got.put(bool(flags.session_present))
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0  # this probe leaves nothing behind
        c.connect("127.0.0.1", port, keepalive=10, clean_start=False, properties=props)
    else:
        c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        return got.get(timeout=10)
    finally:
        c.disconnect()
        c.loop_stop()


class _V311Run(MonitorRun):
    """A monitor held to MQTT 3.1.1."""

    def _run(self) -> None:
        self.target = Target(dataclasses.replace(self.target.link, protocol="3.1.1"))
        super()._run()


@pytest.mark.broker
def test_monitor__an_alarm_sent_while_its_link_is_down_is_shown_after_the_reconnect(
    broker: Broker, central: Central, device: str, proxy: FaultProxy, monitor: Callable[..., MonitorRun]
) -> None:
    """With a clean start the broker dropped an alarm published while the monitor was away: never shown."""
    run = monitor(proxy.port)
    proxy.set_down(True)
    run.wait_for("lost the connection")
    alarm = event(device, seq=1)
    central.publish(topic("event/panic", device), enc(alarm))  # PUBACKed: the device lets it go
    proxy.set_down(False)
    run.wait_for("reconnected to", timeout=40)
    out = run.wait_for(alarm["id"])
    assert out.count(alarm["id"]) == 1
    assert f"{col(device)}  panic" in out


@pytest.mark.broker
def test_monitor__a_clean_exit_ends_its_session_on_the_broker(
    broker: Broker, monitor: Callable[..., MonitorRun]
) -> None:
    """A persistent session must not outlive the monitor: the broker would queue the fleet's events for it."""
    run = monitor(broker.port)
    client_id = _client_id(run)
    assert run.close() == 0
    assert not _session_present(broker.port, client_id, v5=True)


@pytest.mark.broker
def test_monitor__a_clean_exit_ends_its_mqtt_311_session_too(broker: Broker) -> None:
    """MQTT 3.1.1 sessions have no expiry: the monitor ends its own with a clean connect at exit."""
    run = _V311Run(broker.port)
    try:
        assert "(MQTT 3.1.1)" in run.err.getvalue()
        client_id = _client_id(run)
    finally:
        assert run.close() == 0
    assert not _session_present(broker.port, client_id, v5=False)


@pytest.mark.broker
def test_monitor__no_false_overdue_for_a_heartbeating_device_after_a_reconnect(
    central: Central, device: str, proxy: FaultProxy, monitor: Callable[..., MonitorRun], clear_status: None
) -> None:
    """Deadlines ticked from the CONNACK, before the renewed SUBACK brought the statuses: false OVERDUE lines."""
    run = monitor(proxy.port, overdue_after_s=2.0)
    beats = _Heartbeats(central, device)
    try:
        run.wait_for(f"{col(device)}  online")
        proxy.set_down(True)
        run.wait_for("lost the connection")
        # 2.5 s: longer than overdue_after_s, the device beating all along; up again before paho's second retry
        # (3 s after the drop: 1 s, then 2 s), or it waits 4 s more for the third
        beats.wait_beats(10)
        proxy.set_latency(0.8)  # a slow path (or, at 20,000 devices, a second of retained statuses)
        proxy.set_down(False)
        run.wait_for("reconnected to", timeout=40)
        never(lambda: f"{col(device)}  OVERDUE" in run.out.getvalue(), 5.0, "a false OVERDUE")
    finally:
        beats.close()


@pytest.mark.broker
def test_monitor__a_device_that_went_offline_while_the_monitor_was_away_is_announced(
    central: Central, device: str, proxy: FaultProxy, monitor: Callable[..., MonitorRun], clear_status: None
) -> None:
    """Retained statuses after a reconnect were applied silently: the device's OFFLINE never printed."""
    run = monitor(proxy.port)
    central.publish(topic("status", device), enc(status(device, ts=time.time())), retain=True)
    run.wait_for(f"{col(device)}  online           (first status seen)")
    proxy.set_down(True)
    run.wait_for("lost the connection")
    central.publish(topic("status", device), enc(offline(device, "lost")), retain=True)  # its will, meanwhile
    proxy.set_down(False)
    out = run.wait_for(f"{col(device)}  OFFLINE          lost: the broker lost its connection (will)", timeout=40)
    assert out.count(f"{col(device)}  OFFLINE") == 1


@pytest.mark.broker
def test_monitor__the_board_says_when_the_monitor_is_not_connected(
    central: Central, device: str, proxy: FaultProxy, monitor: Callable[..., MonitorRun]
) -> None:
    """The board kept printing its counts while the monitor heard nothing: a deaf monitor looked like a calm fleet."""
    run = monitor(proxy.port, table_every_s=0.5)
    proxy.set_down(True)
    run.wait_for("lost the connection")
    run.wait_for("NOT CONNECTED since")

    def board_back() -> bool:
        _before, _, after = run.out.getvalue().partition("reconnected to")
        headers = _HEADER.findall(after)  # the group: "" for a header without NOT CONNECTED
        return bool(headers) and headers[-1] == ""

    proxy.set_down(False)
    run.wait_for("reconnected to", timeout=40)
    eventually(board_back, 10, lambda: f"a board without NOT CONNECTED; out was:\n{run.out.getvalue()[-2000:]}")
