"""A broker that accepts the agent but never sends a PUBACK must not keep it: the next broker is tried.

Found by a hunt: the no-PUBACK check ends such a session cleanly after its
deadline, but the session had lasted ``failover.STABLE_S`` by then, so the sender
counted it as one that worked, reset the backoff and reconnected to the same
broker, resending the alarm into it for ever while a healthy second broker
was never tried.  A session ended by the no-PUBACK check now counts as a
failed attempt: failover goes on and the backoff grows.

The deadline is ``max(STABLE_S, keepalive)``; the test shortens both to 1 s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.support.clocks import synced_clock
from tests.support.fake5 import Conn, Fake5
from tests.support.uplinkrig import Rig, mqtt_cfg
from tests.support.waiting import eventually

CLOCK = synced_clock()


def close(*brokers: Fake5) -> None:
    for b in brokers:
        b.close()


def test_uplink__a_broker_that_never_pubacks_is_left_for_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.failover.STABLE_S", 1.0)
    stuck = Fake5(on_publish=lambda *_a: None)  # takes every PUBLISH, never PUBACKs (its storage stuck)
    good = Fake5()
    rig = Rig(tmp_path, mqtt_cfg(stuck.port, good.port, client_id="main/np", keepalive_s=1), "np")
    try:
        rig.put(1)
        rig.uplink.start()
        eventually(
            lambda: len(rig.delivered) == 1,
            8.0,
            lambda: (
                f"the alarm never reached the healthy broker: stuck conns={len(stuck.conns)} "
                f"good conns={len(good.conns)}"
            ),
        )
        assert len(stuck.conns) == 1, "one session on the stuck broker, then the next broker"
        assert any(b"panic" in p for _n, _t, p in stuck.published), "the alarm went to the stuck broker first"
    finally:
        rig.close()
        close(stuck, good)


def test_uplink__a_lost_alarm_is_sent_again_within_a_couple_of_deadlines_while_statuses_are_acked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status PUBACKs kept the link looking alive: a lost alarm waited for the 6-deadline backstop (a review)."""
    monkeypatch.setattr("agent.failover.STABLE_S", 1.0)  # the deadline: max(STABLE_S, keepalive 1 s) = 1 s
    lost: list[int] = []

    def on_publish(c: Conn, pid: int, topic: str, _payload: bytes) -> None:
        if "/event/panic" in topic and not lost:
            lost.append(pid)  # the broker lost this PUBLISH (no PUBACK), and acks everything else
            return
        c.puback(pid)

    broker = Fake5(on_publish=on_publish)
    with Outbox(tmp_path / "ob.db", site="main", device="lost") as ob:
        up = Uplink(
            mqtt_cfg(broker.port, client_id="main/lost", keepalive_s=1, protocol="5"),
            topic_root="campus/main/lost",
            outbox=ob,
            status=lambda: {"v": 1, "state": "online"},
            offline=lambda r: {"v": 1, "state": "offline", "reason": r},
        )
        stop = threading.Event()

        def heartbeat() -> None:  # the agent's heartbeat: a status every 0.4 s (the default is 30 s against 30 s)
            while not stop.wait(0.4):
                up.publish_status({"v": 1, "state": "online"})

        up.start()
        hb = threading.Thread(target=heartbeat, daemon=True)
        try:
            eventually(lambda: up.state().connected, 5.0, "connected")
            hb.start()
            time.sleep(0.5)
            ob.put(Event.create(CLOCK, EventType.PANIC, "panic"))
            up.wake()
            eventually(lambda: lost, 3.0, "the alarm's first PUBLISH")
            t0 = time.monotonic()
            eventually(lambda: ob.pending() == 0, 10.0, "the alarm sent again and acked")
            took = time.monotonic() - t0
            assert took < 3.0, f"the lost alarm stayed in flight {took:.1f} s (deadline 1 s) while statuses were acked"
        finally:
            stop.set()
            up.close()
            broker.close()
