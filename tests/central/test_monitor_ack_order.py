"""`monitor --ack`: which alarm Enter acknowledges when real alarms and test presses wait together.

Enter used to acknowledge the newest entry, a technician's TEST press included,
ahead of a real panic still waiting: the panic's presser got no "help is
coming", and the operator's screen read "ack sent for panic" as if it were real.
"""

from __future__ import annotations

import io
import json

import pytest

from agent.central.acks import AckDesk
from agent.central.display import Alarm
from agent.central.link import Incoming
from agent.central.session import MonitorOptions, _Session
from tests.central.test_monitor import enc, event, topic

T = 1.8e9


def _alarm(n: int, *, test: bool) -> Alarm:
    return Alarm("main", f"gate-{n}", f"{n:032x}", "panic", T + n, test=test)


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([(1, False), (2, True)], 1),  # a real panic, then a test press: the panic
        ([(1, True), (2, False), (3, True)], 2),
        ([(1, False), (2, False), (3, True)], 2),  # the newest real one
        ([(1, True), (2, True)], 2),  # no real alarm waits: the newest test press
        ([(1, False)], 1),
    ],
)
def test_ack_desk__next_unacked_prefers_the_newest_real_alarm(offered: list[tuple[int, bool]], expected: int) -> None:
    desk = AckDesk()
    for n, test in offered:
        desk.offer(_alarm(n, test=test))
    assert desk.next_unacked() == _alarm(expected, test=dict(offered)[expected])


def test_ack_desk__test_press_comes_once_the_real_alarms_are_acknowledged() -> None:
    desk = AckDesk()
    real, test = _alarm(1, test=False), _alarm(2, test=True)
    desk.offer(real)
    desk.offer(test)
    desk.sent(real, "c-1", T)
    assert desk.next_unacked() == test
    desk.failed("c-1")  # the ack could not be published: the real alarm goes first again
    assert desk.next_unacked() == real


def test_ack_desk__past_its_bound_a_test_press_is_forgotten_before_a_real_alarm() -> None:
    desk = AckDesk()
    desk.offer(_alarm(0, test=False))  # the oldest: a real panic nobody has acknowledged yet
    for n in range(1, 1001):
        desk.offer(_alarm(n, test=True))  # a technician's round of test presses
    assert len(desk.unacked()) == 1000
    assert _alarm(0, test=False) in desk.unacked(), "the real panic can no longer be acknowledged"
    assert desk.next_unacked() == _alarm(0, test=False)
    assert _alarm(1, test=True) not in desk.unacked(), "the oldest test press went instead"


class _Link:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, json.loads(payload)))

    def send(self, topic: str, payload: bytes) -> int:
        self.publish(topic, payload)
        return len(self.sent)


def _press(session: _Session, device: str, *, test: bool, at: float) -> str:
    doc = event(device, test=test)
    session._incoming(Incoming(topic("event/panic", device), enc(doc), False, at))
    return str(doc["id"])


@pytest.mark.parametrize("as_json", [False, True])
def test_session__enter_acknowledges_the_real_panic_not_a_later_test_press(as_json: bool) -> None:
    link, out = _Link(), io.StringIO()
    session = _Session(link, None, "campus", MonitorOptions(json=as_json), out, wall=lambda: T)  # type: ignore[arg-type]
    real = _press(session, "gate-1", test=False, at=T)
    test = _press(session, "gate-2", test=True, at=T + 5)
    session._ack(T + 6)  # Enter
    session._ack(T + 7)  # Enter again: only the test press is left
    assert [(t, doc["event_id"]) for t, doc in link.sent] == [
        ("campus/main/gate-1/cmd/ack", real),
        ("campus/main/gate-2/cmd/ack", test),
    ]
    first, second = out.getvalue().splitlines()[-2:]
    if as_json:
        assert (json.loads(first)["test"], json.loads(second)["test"]) == (False, True)
    else:
        assert f"ack sent for panic {real} as " in first
        assert f"ack sent for TEST panic (no real alarm waits) {test} as " in second
