"""A SUBSCRIBE the broker never answers is a failure said in status and retried, not a grant kept from before.

Found by a hunt: the command route kept the last thing learnt across
connections, so after a reconnect whose SUBSCRIBE got no SUBACK (the
subscription queue's node hanging) status went on saying commands were
available, from the previous connection's grant, and the subscription was
never sent again.  Now each connection's subscription starts "subscribing";
no SUBACK within the deadline (the events' PUBACK deadline) is a failure,
retried after the usual back-off.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.linkstate import RETRY_MIN_S, SUBSCRIBING, CommandRoute
from tests.support import fake5
from tests.support.fake5 import Fake5
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


def test_command_route__a_new_connection_is_subscribing_until_its_own_suback() -> None:
    r = granted_route()
    s = FakeSession()
    assert r.tend(s, "todo", 100.0, lambda: True) == ("sent", True), "status says so: a change"  # type: ignore[arg-type]
    assert (r.available, r.reason) == (False, SUBSCRIBING)
    s.answer = (True, None)
    assert r.tend(s, "sent", 101.0, lambda: True) == ("done", True)  # type: ignore[arg-type]
    assert r.available


def test_command_route__no_suback_within_the_deadline_fails_and_is_retried_after_the_back_off() -> None:
    r = granted_route()
    s = FakeSession()
    step, _ = r.tend(s, "todo", 100.0, lambda: True)  # type: ignore[arg-type]
    assert r.wait_s(step, 100.0) == 5.0, "the sender looks again at the deadline"
    assert r.tend(s, step, 104.9, lambda: True) == ("sent", False)  # type: ignore[arg-type]
    step, changed = r.tend(s, step, 105.0, lambda: True)  # type: ignore[arg-type]
    assert (step, changed, r.available) == ("todo", True, False)
    assert r.reason is not None
    assert "did not answer the subscription" in r.reason
    assert r.wait_s(step, 105.0) == RETRY_MIN_S
    assert r.tend(s, step, 105.0 + RETRY_MIN_S - 1, lambda: True)[0] == "todo", "not before the back-off"  # type: ignore[arg-type]
    assert r.tend(s, step, 105.0 + RETRY_MIN_S, lambda: False)[0] == "sent", "the backlog need not be empty"  # type: ignore[arg-type]
    assert s.subscribes == 2


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
        assert not rig.uplink.state().commands_available, "no grant on this connection yet"
        eventually(
            lambda: "did not answer" in (rig.uplink.state().commands_reason or ""), 3.0, "the missing SUBACK in status"
        )
        eventually(lambda: _MuteLater.subscribes.count(2) >= 2, 3.0, "the subscription sent again on that connection")
        assert rig.uplink.state().connected, "events keep flowing on the connection"
    finally:
        rig.close()
        fb.close()
