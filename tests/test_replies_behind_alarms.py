"""Command replies and status documents never stand in paho's queue ahead of an alarm, and are never lost.

A hunt found a command flood under a small Receive Maximum putting a press
behind dozens of replies: every waiting reply was handed to paho at once,
paho is held to the broker's Receive Maximum and sends its queue in order, so
the alarm waited about replies / Receive Maximum round trips (3.6 s behind 52
replies at 150 ms).  Replies a session had handed to paho were also lost when
it ended.  The broker here is tests/support/fake5.py: mosquitto cannot be
made to hold its PUBACKs back or to announce a Receive Maximum of 2.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from agent.events import Event, EventType
from agent.outgoing import MAX_BESIDE, Outgoing, beside_slots
from tests.support.fake5 import Conn, Fake5, prop_u16
from tests.support.uplinkrig import CLOCK, Rig, RigFactory, mqtt_cfg
from tests.support.waiting import eventually

RECEIVE_MAXIMUM = 0x21


class _Acks:
    """The broker's PUBACKs: at once, except those ``hold`` picks, kept back until :meth:`release`."""

    def __init__(self, hold: Callable[[int, str, bytes], bool]) -> None:
        self._hold = hold  # (connection number, topic, payload) -> keep its PUBACK back
        self._lock = threading.Lock()
        self._held: list[tuple[Conn, int]] | None = []  # None: released

    def __call__(self, c: Conn, pid: int, topic: str, payload: bytes) -> None:
        with self._lock:
            if self._held is not None and self._hold(c.n, topic, payload):
                self._held.append((c, pid))
                return
        c.puback(pid)

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
        for c, pid in held:
            c.puback(pid)


def _topics(fb: Fake5) -> list[str]:
    return [t for _n, t, _p in fb.published]


def _reply_ids(fb: Fake5, conn: int | None = None) -> list[str]:
    return [json.loads(p)["id"] for n, t, p in fb.published if t.endswith("/reply") and conn in (None, n)]


def _online(rig: Rig, fb: Fake5) -> None:
    eventually(lambda: f"{rig.root}/status" in _topics(fb), 10.0, "the birth status")


def test_replies__an_alarm_goes_ahead_of_a_reply_flood(rig_factory: RigFactory) -> None:
    acks = _Acks(lambda _n, topic, _p: topic.endswith("/reply"))  # a slow broker: the replies' PUBACKs wait
    fb = Fake5(connack_props=prop_u16(RECEIVE_MAXIMUM, 2), on_publish=acks)
    try:
        rig = rig_factory(mqtt_cfg(fb.port, client_id="main/flood"), "flood")
        rig.uplink.start()
        _online(rig, fb)
        flood = 20
        for i in range(flood):
            rig.uplink.publish("reply", {"v": 1, "id": f"r{i}", "ok": True})
        eventually(lambda: _reply_ids(fb), 10.0, "the first reply")
        rig.uplink.offer([rig.outbox.put_row(Event.create(CLOCK, EventType.PANIC, "panic"))])
        alarm = f"{rig.root}/event/panic"
        eventually(lambda: alarm in _topics(fb), 5.0, lambda: f"the alarm, behind {len(_reply_ids(fb))} replies")
        assert _reply_ids(fb) == ["r0"], "one reply at a time beside the events: the alarm had its slot"
        acks.release()
        eventually(lambda: len(_reply_ids(fb)) == flood, 10.0, lambda: f"all replies, got {_reply_ids(fb)}")
        assert _reply_ids(fb) == [f"r{i}" for i in range(flood)], "every reply once, in order"
        assert fb.max_unacked <= 2
    finally:
        acks.release()
        fb.close()


def test_replies__handed_over_when_the_session_drops_go_again(rig_factory: RigFactory) -> None:
    acks = _Acks(lambda n, topic, _p: n == 1 and topic.endswith("/reply"))  # the first connection acks no reply
    fb = Fake5(connack_props=prop_u16(RECEIVE_MAXIMUM, 2), on_publish=acks)
    try:
        rig = rig_factory(mqtt_cfg(fb.port, client_id="main/again"), "again")
        rig.uplink.start()
        _online(rig, fb)
        for i in range(3):
            rig.uplink.publish("reply", {"v": 1, "id": f"r{i}", "ok": True})
        eventually(lambda: _reply_ids(fb, 1), 10.0, "a reply on the first connection")
        fb.conns[0].close()
        eventually(lambda: len(_reply_ids(fb, 2)) == 3, 10.0, lambda: f"the replies again, got {_reply_ids(fb)}")
        assert _reply_ids(fb, 2) == ["r0", "r1", "r2"]
        assert _reply_ids(fb, 1) == ["r0"], "one reply at a time beside the events"
    finally:
        acks.release()
        fb.close()


def test_replies__waiting_at_a_stop_go_behind_the_shutdown_status(rig_factory: RigFactory) -> None:
    acks = _Acks(lambda _n, _t, payload: b'"r0"' in payload)  # r0 holds the slot: r1 and r2 wait for it
    fb = Fake5(connack_props=prop_u16(RECEIVE_MAXIMUM, 3), on_publish=acks)
    try:
        rig = rig_factory(mqtt_cfg(fb.port, client_id="main/stop"), "stop")
        rig.uplink.start()
        _online(rig, fb)
        for i in range(3):
            rig.uplink.publish("reply", {"v": 1, "id": f"r{i}", "ok": True})
        eventually(lambda: _reply_ids(fb), 10.0, "the first reply")
        rig.uplink.stop()
        after = [t.rsplit("/", 1)[1] for _n, t, _p in fb.published][-3:]
        assert after == ["status", "reply", "reply"], "the shutdown status first, then the replies waiting"
        statuses = [json.loads(p) for _n, t, p in fb.published if t.endswith("/status")]
        assert statuses[-1].get("reason") == "shutdown"
        assert _reply_ids(fb) == ["r0", "r1", "r2"]
    finally:
        acks.release()
        fb.close()


def test_outgoing__takes_the_status_first_and_no_more_than_the_room() -> None:
    out = Outgoing()
    for i in range(3):
        out.reply("t/reply", {"i": i})
    out.status({"n": 1})
    assert out.take(0) == (None, [])
    status, replies = out.take(2)
    assert status == {"n": 1}
    assert [json.loads(p)["i"] for _t, p in replies] == [0]
    assert out.waiting


def test_outgoing__a_new_session_sends_the_replies_in_flight_first() -> None:
    out = Outgoing()
    out.reply("t/reply", {"i": 0})
    out.reply("t/reply", {"i": 1})
    _status, [first] = out.take(1)
    out.sent(7, 0.0, first)
    out.sent(8, 0.0)  # a status: not sent again
    out.new_session()
    assert [json.loads(p)["i"] for _t, p in out.take()[1]] == [0, 1]
    assert out.unacked(0.0, 10.0) == 0


def test_outgoing__a_publish_whose_puback_was_lost_stops_holding_the_slot() -> None:
    out = Outgoing()
    out.sent(1, 100.0, ("t/reply", b"{}"))
    assert out.unacked(105.0, 10.0) == 1
    assert out.stale_in(105.0, 10.0) == 5.0
    assert out.unacked(110.0, 10.0) == 0
    out.acked([1])
    assert out.unacked(105.0, 10.0) == 0


def test_outgoing__beside_slots_never_take_an_events_slot() -> None:
    assert beside_slots(2, 1) == 1
    assert beside_slots(1, 1) == 1  # one reply at a time, or none would ever go
    assert beside_slots(20, 10) == MAX_BESIDE
    assert beside_slots(None, 10) == MAX_BESIDE
