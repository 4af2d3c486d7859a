"""A SUBSCRIBE the broker never answers is a failure said in status and retried, not a grant kept from before.

Found by a hunt: the command route kept the last thing learnt across
connections, so after a reconnect whose SUBSCRIBE got no SUBACK (the
subscription queue's node hanging) status went on saying commands were
available, from the previous connection's grant, and the subscription was
never sent again.  Now no SUBACK within the deadline (the events' PUBACK
deadline) is a failure, said in status and retried after the usual back-off
(at once on a new connection); a SUBACK that comes later still grants it.
While a reconnect's SUBACK is pending, status keeps the last thing learnt:
one retained status per reconnect, no flapping (found by a review).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.linkstate import RETRY_MIN_S, SUBSCRIBING, CommandRoute
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.support import fake5
from tests.support.fake5 import Conn, Fake5, packet
from tests.support.uplinkrig import Rig, mqtt_cfg
from tests.support.waiting import eventually

PREFIX = "campus/main/d/cmd/"


class FakeSession:
    """What the command route asks of a session: SUBSCRIBE, and its SUBACK when the test gives one."""

    broker = "127.0.0.1:1883"
    lost_reason = "gone"

    def __init__(self) -> None:
        self.subscribes = 0
        self.answer: tuple[bool, str | None] = (False, None)

    def subscribe(self, _topic: str) -> bool:
        self.subscribes += 1
        return True

    def suback(self) -> tuple[bool, str | None]:
        return self.answer


def granted_route() -> CommandRoute:
    r = CommandRoute(PREFIX, answer_s=5.0)
    first = FakeSession()
    step, _ = r.tend(first, "todo", 0.0, lambda: True)  # type: ignore[arg-type]
    first.answer = (True, None)
    assert r.tend(first, step, 1.0, lambda: True) == ("done", True)  # type: ignore[arg-type]
    return r


def test_command_route__starts_subscribing_and_a_reconnect_keeps_the_last_known_state() -> None:
    assert (CommandRoute(PREFIX).available, CommandRoute(PREFIX).reason) == (False, SUBSCRIBING)
    r = granted_route()
    s = FakeSession()
    assert r.tend(s, "todo", 100.0, lambda: True) == ("sent", False), "no status change while the SUBACK is pending"  # type: ignore[arg-type]
    assert (r.available, r.reason) == (True, None)
    s.answer = (True, None)
    assert r.tend(s, "sent", 101.0, lambda: True) == ("done", False)  # type: ignore[arg-type]
    assert r.available


def timed_out_route() -> tuple[CommandRoute, FakeSession, str]:
    r = granted_route()
    s = FakeSession()
    step, _ = r.tend(s, "todo", 100.0, lambda: True)  # type: ignore[arg-type]
    assert r.wait_s(step, 100.0) == 5.0, "the sender looks again at the deadline"
    assert r.tend(s, step, 104.9, lambda: True) == ("sent", False)  # type: ignore[arg-type]
    step, changed = r.tend(s, step, 105.0, lambda: True)  # type: ignore[arg-type]
    assert (step, changed, r.available) == ("late", True, False)
    assert r.reason is not None
    assert "did not answer the subscription" in r.reason
    return r, s, step


def test_command_route__no_suback_within_the_deadline_fails_and_is_retried_after_the_back_off() -> None:
    r, s, step = timed_out_route()
    assert r.wait_s(step, 105.0) == RETRY_MIN_S
    assert r.tend(s, step, 105.0 + RETRY_MIN_S - 1, lambda: True)[0] == "late", "not before the back-off"  # type: ignore[arg-type]
    assert r.tend(s, step, 105.0 + RETRY_MIN_S, lambda: False)[0] == "sent", "the backlog need not be empty"  # type: ignore[arg-type]
    assert s.subscribes == 2


def test_command_route__a_suback_after_the_deadline_still_grants_the_subscription() -> None:
    r, s, step = timed_out_route()
    s.answer = (True, None)
    assert r.tend(s, step, 106.0, lambda: True) == ("done", True)  # type: ignore[arg-type]
    assert (r.available, r.reason) == (True, None)


def test_command_route__a_new_connection_after_a_late_suback_subscribes_at_once() -> None:
    r, _s, _step = timed_out_route()
    r.begin()
    fresh = FakeSession()
    assert r.tend(fresh, "todo", 106.0, lambda: True)[0] == "sent", "not after the back-off: a new broker may answer"  # type: ignore[arg-type]


class _MuteLater(fake5.Conn):
    """A connection after the first gets no SUBACK (the broker's subscription queue hangs)."""

    subscribes: list[int] = []  # noqa: RUF012 - one test's tally, reset by it

    def send(self, data: bytes) -> None:
        if data[:1] == b"\x90":
            _MuteLater.subscribes.append(self.n)
            if self.n > 1:
                return
        super().send(data)


def test_uplink__an_unanswered_subscribe_after_a_reconnect_is_reported_and_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.failover.STABLE_S", 1.0)  # the deadline: max(STABLE_S, keepalive)
    monkeypatch.setattr("agent.linkstate.RETRY_MIN_S", 0.3)
    monkeypatch.setattr(fake5, "Conn", _MuteLater)
    _MuteLater.subscribes = []
    fb = Fake5()
    rig = Rig(tmp_path, mqtt_cfg(fb.port, client_id="main/mute", keepalive_s=1), "mute")
    try:
        rig.uplink.start()
        eventually(lambda: rig.uplink.state().commands_available, 3.0, "the first connection's grant")
        fb.conns[0].close()  # the link drops; the next connection's SUBSCRIBE is never answered
        eventually(lambda: 2 in _MuteLater.subscribes, 3.0, "the second connection's SUBSCRIBE")
        eventually(
            lambda: "did not answer" in (rig.uplink.state().commands_reason or ""), 3.0, "the missing SUBACK in status"
        )
        eventually(lambda: _MuteLater.subscribes.count(2) >= 2, 3.0, "the subscription sent again on that connection")
        assert rig.uplink.state().connected, "events keep flowing on the connection"
    finally:
        rig.close()
        fb.close()


class _LateSubAck(Fake5):
    """Fake5 whose SUBACK (granted) comes ``late_s`` after the SUBSCRIBE: a loaded broker."""

    def __init__(self, late_s: float) -> None:
        self.late_s = late_s
        super().__init__()

    def _serve(self, c: Conn) -> None:
        try:
            fake5._read_packet(c.sock)
            c.send(packet(0x20, bytes([0, 0]) + fake5.varint(0)))
            while not c.closed:
                first, body = fake5._read_packet(c.sock)
                kind = first >> 4
                if kind == 3:
                    self._publish(c, first, body)
                elif kind == 8:
                    t = threading.Timer(self.late_s, c.send, (packet(0x90, body[:2] + b"\x00\x01"),))
                    t.daemon = True
                    t.start()
                elif kind == 12:
                    c.send(b"\xd0\x00")
                elif kind == 14:
                    return
        except (ConnectionError, OSError, IndexError):
            pass
        finally:
            c.close()


def test_uplink__a_late_suback_makes_commands_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.failover.STABLE_S", 1.0)  # the deadline: max(STABLE_S, keepalive) = 1 s
    broker = _LateSubAck(late_s=1.6)
    rig = Rig(tmp_path, mqtt_cfg(broker.port, client_id="main/ls", keepalive_s=1), "ls")
    try:
        rig.uplink.start()
        eventually(
            lambda: "did not answer" in (rig.uplink.state().commands_reason or ""), 3.0, "the deadline passes first"
        )
        eventually(lambda: rig.uplink.state().commands_available, 3.0, "the late grant counts")
        assert len(broker.conns) == 1
    finally:
        rig.close()
        broker.close()


def test_uplink__a_reconnect_publishes_one_status(tmp_path: Path) -> None:
    broker = Fake5()
    with Outbox(tmp_path / "ob.db", site="main", device="st") as ob:
        holder: list[Uplink] = []

        def status() -> dict[str, Any]:
            return {"v": 1, "state": "online", "commands": holder[0].state().commands_available}

        up = Uplink(
            mqtt_cfg(broker.port, client_id="main/st", keepalive_s=5),
            topic_root="campus/main/st",
            outbox=ob,
            status=status,
            offline=lambda r: {"v": 1, "state": "offline", "reason": r},
        )
        holder.append(up)
        up.start()
        try:
            eventually(lambda: up.state().commands_available, 3.0, "first subscription")
            broker.conns[-1].close()  # the link drops; the agent reconnects

            def on_second(sub: str) -> list[bytes]:
                return [p for n, t, p in broker.published if n == 2 and t.endswith(sub)]

            eventually(lambda: on_second("/status"), 5.0, "the reconnect's birth (after its SUBSCRIBE)")
            for n in (1, 2):  # a status the grant would add goes out before the second reply
                up.publish("reply/x", {"n": n})
                eventually(lambda: len(on_second("/reply/x")) == n, 2.0, f"reply {n}")
            docs = [json.loads(p) for p in on_second("/status")]
            assert docs == [{"v": 1, "state": "online", "commands": True}], "one status, commands kept available"
        finally:
            up.close()
            broker.close()
