"""The heartbeat interval learned from an agent that does not name it (no ``heartbeat_s``).

A hunt found that the interval was the largest of the last 32 gaps, with no
floor once 3 were known: a burst of statuses sent on changes (an input
bouncing, an agent's start) taught the monitor a heartbeat of a fraction of
a second, and a live device was flagged OVERDUE seconds later.
"""

from __future__ import annotations

import datetime as dt

from agent.central.fleet import FleetView
from agent.central.fleetmsg import GAP_HOLD_S
from tests.central.test_monitor import T0, enc, status, topic


def _beat(fleet: FleetView, at: float) -> None:
    fleet.feed(topic("status"), enc(status(ts=at)), at)


def _interval(fleet: FleetView, at: float) -> float:
    return fleet.rows(at)[0].interval_s


def test_learn__a_burst_of_change_statuses_does_not_shrink_a_30s_heartbeat() -> None:
    fleet = FleetView(tz=dt.UTC)
    t = T0
    for _ in range(5):
        _beat(fleet, t)
        t += 30
    assert _interval(fleet, t) == 30
    for i in range(40):  # an input bouncing: a status at once on each change, more than the old 32-gap window
        _beat(fleet, t + 0.25 * i)
    last = t + 0.25 * 39
    assert _interval(fleet, last) == 30
    assert fleet.tick(last + 5) == []
    assert fleet.tick(last + 89) == []
    assert [ln.text.split()[2] for ln in fleet.tick(last + 91)] == ["OVERDUE"]


def test_learn__changes_every_10s_for_many_heartbeats_keep_the_30s_heartbeat() -> None:
    """Gaps of 5 s and more are learned, but the largest stays for hours: 40 of them cannot push it out."""
    fleet = FleetView(tz=dt.UTC)
    t = T0
    for _ in range(5):
        _beat(fleet, t)
        t += 30
    for _ in range(40):
        _beat(fleet, t)
        t += 10
    assert _interval(fleet, t) == 30


def test_learn__the_burst_at_an_agent_start_is_not_a_heartbeat() -> None:
    fleet = FleetView(tz=dt.UTC)
    for i in range(6):  # connect, then inputs and cameras settling: statuses on changes
        _beat(fleet, T0 + 0.3 * i)
    assert _interval(fleet, T0 + 2) == 30  # the default, a floor until gaps are learned
    assert fleet.tick(T0 + 10) == []


def test_learn__a_shorter_heartbeat_is_learned_once_the_longer_one_is_hours_old() -> None:
    fleet = FleetView(tz=dt.UTC)
    t = T0
    for _ in range(5):
        _beat(fleet, t)
        t += 300
    assert _interval(fleet, t) == 300
    end = t + 2 * GAP_HOLD_S + 60
    while t < end:  # reconfigured to 30 s
        _beat(fleet, t)
        t += 30
    assert _interval(fleet, t) == 30


def test_learn__a_device_back_from_offline_learns_again() -> None:
    fleet = FleetView(tz=dt.UTC)
    t = T0
    for _ in range(5):
        _beat(fleet, t)
        t += 300
    fleet.feed(topic("status"), enc({**status(), "state": "offline", "reason": "lost"}), t)
    _beat(fleet, t + 1)
    assert _interval(fleet, t + 1) == 30
