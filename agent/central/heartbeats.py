"""When a device's status was sent and how often the device reports: what its deadline is reckoned from.

Pure functions of one status or one device, for
:class:`~agent.central.fleet.FleetView`.  The **heartbeat interval** is the
status's ``heartbeat_s`` when it names one (agents from this version on do);
otherwise it is learned from the gaps between consecutive live ``online``
statuses (:func:`~agent.central.fleetmsg.learn_gap`): the largest over the
last two to four hours, gaps under 5 s (the agent's smallest interval: a
burst of statuses sent on changes) left out.  The agent restarts its
heartbeat timer after every status sent on a change, so gaps are at most one
interval and the largest is the interval; a burst of changes cannot push it
out.  Until 3 gaps are learned the view's default is a floor (the burst of
statuses at an agent's start is not a heartbeat).  A retained status is reckoned from
its ``ts`` when that can be trusted (:func:`heard_at`).
"""

from __future__ import annotations

from typing import Any

from agent.central.display import parse_ts
from agent.central.fleetmsg import MIN_GAPS, Device, learned_gap


def interval(dev: Device, default_s: float) -> float:
    """``dev``'s heartbeat interval in seconds: named, learned, or at least ``default_s`` until learned."""
    if dev.announced is not None:  # the device says how often it reports: nothing to learn
        return dev.announced
    learned = learned_gap(dev)
    return learned if dev.learned >= MIN_GAPS else max(default_s, learned)


def heard_at(doc: dict[str, Any], at: float, mono: float, *, retained: bool) -> float:
    """When the status was sent, on the monotonic clock: a synchronised retained ``ts`` is aged on the wall."""
    if not retained:
        return mono
    ts = parse_ts(doc.get("ts"))
    return mono - (at - ts) if ts is not None and doc.get("clock_synced") is True and ts <= at else mono


def same_status(ts: object, last: object) -> bool:
    """True when a status's ``ts`` is the one last taken: the same document again, whatever the clocks say."""
    return ts is not None and ts == last


def interval_named(doc: dict[str, Any]) -> float | None:
    """The status's ``heartbeat_s`` when it is a plausible interval (5 s to 1 h), else None (then learned)."""
    value = doc.get("heartbeat_s")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 5 <= value <= 3600:
        return None
    return float(value)
