"""The PUBACK deadline rule on its own (agent/overdue.py): when a publish still waiting ends the session."""

from __future__ import annotations

import math

import pytest

from agent import failover, overdue
from agent.overdue import Late, deadline_s, late

D = 10.0  # the deadline, s
NOW = 1000.0


def test_deadline_s__is_the_keepalive_but_never_below_a_stable_session() -> None:
    assert deadline_s(1) == failover.STABLE_S
    assert deadline_s(60) == 60.0


@pytest.mark.parametrize(
    ("case", "waiting", "last_at", "latest_sent", "expected"),
    [
        ("nothing waiting", ([], None), 0.0, -math.inf, None),
        ("within the deadline", ([(NOW - 9, "seq 1 (panic)")], None), 0.0, -math.inf, None),
        (
            "past it, link quiet",
            ([(NOW - 11, "seq 1 (panic)")], None),
            NOW - 11,
            -math.inf,
            Late("seq 1 (panic)", 11, event=True),
        ),
        ("past it, link acks older ones", ([(NOW - 11, "seq 1 (panic)")], None), NOW - 1, NOW - 20, None),
        (
            "past it, a later one acked",
            ([(NOW - 11, "seq 1 (panic)")], None),
            NOW - 1,
            NOW - 5,
            Late("seq 1 (panic)", 11, event=True),
        ),
        (
            "past the backstop",
            ([(NOW - 6 * D, "seq 1 (panic)")], None),
            NOW - 1,
            NOW - 70,
            Late("seq 1 (panic)", 6 * D, event=True),
        ),
        (
            "the oldest event counts",
            ([(NOW - 2, "seq 2 (fault)"), (NOW - 12, "seq 1 (panic)")], None),
            0.0,
            -math.inf,
            Late("seq 1 (panic)", 12, event=True),
        ),
    ],
)
def test_late__events(
    case: str, waiting: overdue.Waiting, last_at: float, latest_sent: float, expected: Late | None
) -> None:
    assert late(waiting, NOW, D, last_at, latest_sent) == expected, case


def test_late__an_event_behind_a_photo_on_a_slow_link_waits_for_the_photos_bytes() -> None:
    photo = (NOW - 15, 20.0, "photo of 7")  # its bytes take 20 s: through at NOW + 5
    waiting = ([(NOW - 12, "seq 8 (panic)")], photo)
    assert late(waiting, NOW, D, NOW - 30, -math.inf) is None, "quiet only counts once the photo's bytes are through"
    assert late(waiting, NOW + 16, D, NOW - 30, -math.inf) == Late("seq 8 (panic)", 28, event=True)


def test_late__a_photo_alone_is_not_a_lost_event() -> None:
    photo = (NOW - 15, 2.0, "photo of 7")
    assert late(([], photo), NOW, D, NOW - 30, -math.inf) is None, "nothing later acked, below the backstop"
    assert late(([], photo), NOW, D, NOW - 1, NOW - 1) == Late("photo of 7", 15, event=False)
    far = (NOW - 6 * D - 2.0, 2.0, "photo of 7")
    assert late(([], far), NOW, D, NOW - 1, -math.inf) == Late("photo of 7", 6 * D + 2.0, event=False)


def test_late__reads_the_backstop_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    waiting = ([(NOW - 2 * D, "seq 1 (panic)")], None)
    assert late(waiting, NOW, D, NOW - 1, -math.inf) is None
    monkeypatch.setattr("agent.overdue._BACKSTOP", 2)
    assert late(waiting, NOW, D, NOW - 1, -math.inf) == Late("seq 1 (panic)", 2 * D, event=True)
