"""MQTT 5 brokers that set limits or send the agent elsewhere: Receive Maximum, "use another server".

A hunt found both with a small MQTT 5 broker (tests/support/fake5.py): the
agent ignored the CONNACK's Receive Maximum and a broker enforcing it (EMQX
closes with 0x93) never got an alarm, reconnecting dozens of times; and a
node being drained (DISCONNECT 0x9C) got the agent back at once instead of
the next broker in its list.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tests.support.fake5 import Conn, Fake5, prop_str, prop_u16
from tests.support.uplinkrig import Rig, mqtt_cfg
from tests.support.waiting import eventually

RECEIVE_MAXIMUM = 0x21
SERVER_REFERENCE = 0x1C


def _close(*fakes: Fake5) -> None:
    for fb in fakes:
        fb.close()


def test_uplink__a_brokers_receive_maximum_is_never_exceeded(tmp_path: Path) -> None:
    limit = 4
    timers: list[threading.Timer] = []

    def slow_puback(c: Conn, pid: int, _topic: str, _payload: bytes) -> None:
        if len(c.unacked) > limit:
            c.disconnect(0x93)  # Receive Maximum exceeded
            return
        t = threading.Timer(0.2, c.puback, args=(pid,))
        timers.append(t)
        t.start()

    fb = Fake5(connack_props=prop_u16(RECEIVE_MAXIMUM, limit), on_publish=slow_puback)
    rig = Rig(tmp_path, mqtt_cfg(fb.port, client_id="main/rmax", max_inflight=10), "rmax")
    try:
        rig.put(12)
        rig.uplink.start()
        eventually(lambda: len(rig.delivered) == 12, 30.0, "12 panics delivered")
        assert fb.max_unacked <= limit
        assert len(fb.conns) == 1, "the broker never had to close the connection"
    finally:
        rig.close()
        for t in timers:
            t.cancel()
        _close(fb)


def test_uplink__use_another_server_moves_to_the_next_broker(tmp_path: Path) -> None:
    good = Fake5()

    def send_elsewhere(c: Conn) -> None:
        c.disconnect(0x9C, prop_str(SERVER_REFERENCE, f"127.0.0.1:{good.port}"))

    draining = Fake5(on_connected=send_elsewhere, on_publish=lambda *_a: None)
    rig = Rig(tmp_path, mqtt_cfg(draining.port, good.port, client_id="main/f9c"), "f9c")
    try:
        rig.put(1)
        rig.uplink.start()
        eventually(lambda: len(rig.delivered) == 1, 20.0, "the alarm delivered through the next broker")
        assert len(draining.conns) <= 2
    finally:
        rig.close()
        _close(draining, good)


def test_uplink__without_receive_maximum_the_window_is_the_configured_one(tmp_path: Path) -> None:
    def ack_status_only(c: Conn, pid: int, topic: str, _payload: bytes) -> None:
        if "/event/" not in topic:  # the goodbye status is acked: the stop does not wait 2 s for it
            c.puback(pid)

    fb = Fake5(on_publish=ack_status_only)  # no PUBACK for any event: the window fills and stays full
    rig = Rig(tmp_path, mqtt_cfg(fb.port, client_id="main/rnone", max_inflight=10), "rnone")

    def events() -> int:
        return sum("/event/" in topic for _n, topic, _p in fb.published)

    try:
        rig.put(15)
        rig.uplink.start()
        eventually(lambda: events() >= 9, 20.0, "the window full")
        assert events() <= 10
    finally:
        rig.close()
        _close(fb)


def test_uplink__an_event_whose_puback_never_comes_is_sent_again_on_a_new_connection(tmp_path: Path) -> None:
    swallowed: list[int] = []

    def lose_the_first(c: Conn, pid: int, topic: str, _payload: bytes) -> None:
        if "/event/" in topic and not swallowed:
            swallowed.append(pid)  # the broker answers pings, but this PUBLISH is lost
            return
        c.puback(pid)

    fb = Fake5(on_publish=lose_the_first)
    rig = Rig(tmp_path, mqtt_cfg(fb.port, client_id="main/fdrop", keepalive_s=5), "fdrop")
    try:
        rig.put(1)
        rig.uplink.start()
        eventually(lambda: len(rig.delivered) == 1, 40.0, "the alarm delivered on a new connection")
        assert len(fb.conns) == 2
        assert sum("/event/" in t for _n, t, _p in fb.published) == 2
    finally:
        rig.close()
        _close(fb)
