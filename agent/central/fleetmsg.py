"""One fleet message read: its topic's parts, the device it updates, an event's checks and printed line.

:class:`~agent.central.fleet.FleetView` keeps the state (devices, de-dup,
deadlines, counts) and decides what changed; this module holds the values it
keeps per device and the pure parts of reading an event: whether the fields
the contract restricts match the topic (:func:`restricted`) and the line and
JSON record printed for it (:func:`event_line`).  Nothing here looks at more
than one message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.central.board import DeviceState
from agent.central.display import Alarm, Line, LineKind, delay_text, device_key, escape, parse_ts, text_or, valid_type
from agent.central.linkfigures import UNKNOWN, LinkFigures
from agent.events import iso_ms

ALARM_TYPES = frozenset({"panic", "tamper"})
GAP_WINDOW = 32  # heartbeat gaps remembered per device; the interval is the largest
_MAX_INTERVAL_S = 3600.0  # the agent's largest heartbeat.interval_s: a longer gap is never a heartbeat
_MATCH = 0.25  # two gaps within 25 % of each other are the same interval


@dataclass(frozen=True)
class Msg:
    """One message on a ``PREFIX/SITE/DEVICE/...`` topic, its topic already split and checked."""

    topic: str
    site: str
    device: str
    rest: tuple[str, ...]
    payload: bytes
    at: float
    retained: bool = False


@dataclass(slots=True)
class Device:
    """What the monitor knows of one device; :class:`~agent.central.fleet.FleetView` keeps it current."""

    site: str
    device: str
    key: str  # "site/device": the monitor's index into its tables
    state: DeviceState = DeviceState.UNKNOWN
    reason: str | None = None
    heard: float | None = None
    heard_live: bool = False  # ``heard`` is an arrival time, not a retained status's ``ts``
    ts: object = None  # the last online status's ``ts`` as sent: a redelivered copy carries the same
    candidate: float | None = None  # a gap too long to learn at once: learned when the next one matches
    offline_at: float | None = None
    gaps: list[float] = field(default_factory=list)
    announced: float | None = None  # the heartbeat interval the device's status names (heartbeat_s)
    pending: int | None = None
    dropped: int | None = None
    last_event: str | None = None
    last_event_at: float | None = None
    max_seq: int | None = None
    link: LinkFigures = UNKNOWN
    stats_bad: bool = False


def restricted(doc: dict[str, Any], msg: Msg) -> str | None:
    """Why the contract-restricted fields of an event cannot be shown, or ``None``."""
    topic_type = msg.rest[1] if len(msg.rest) == 2 else ""
    if not valid_type(topic_type):
        return "not an event/TYPE topic with a contract event type"
    etype = doc.get("type", topic_type)
    if etype != topic_type:
        shown = escape(str(etype)[:40])
        return f"type '{shown}' is not the topic's ('{topic_type}')"
    for name, expected in (("site", msg.site), ("device", msg.device)):
        value = doc.get(name, expected)
        if value != expected:
            return f"{name} '{escape(str(value)[:70])}' is not the topic's ('{expected}')"
    return None


def event_line(
    msg: Msg, doc: dict[str, Any], eid: str, *, seq: int | None, late: int | None, clock: str, mono: float | None = None
) -> Line:
    """The printed line and JSON record of a new event; ``late`` is the seq it arrived after, if out of order."""
    at, site, device, etype = msg.at, msg.site, msg.device, msg.rest[1]
    ts = parse_ts(doc.get("ts"))
    delay = at - ts if ts is not None else None
    test, synced = doc.get("test") is True, doc.get("clock_synced") is not False
    source = escape(text_or(doc.get("source"), "?")[:40])
    parts = [
        clock,
        device_key(site, device),
        f"{etype:<15}",
        f"from {source:<10}",
        f"seq {opt(seq):<6}",
        "TEST" if test else "    ",
        f"{delay_text(delay):>8}",
    ]
    if not synced:
        parts.append("clock?")
    if late is not None:
        parts.append(f"late (after seq {late})")
    parts.append(f"id {eid}")
    record = {
        "kind": "event",
        "arrived": iso_ms(at),
        "site": site,
        "device": device,
        "id": eid,
        "seq": seq,
        "type": etype,
        "source": doc.get("source"),
        "test": test,
        "ts": doc.get("ts"),
        "clock_synced": synced,
        "delay_ms": round(delay * 1000) if delay is not None else None,
        "late": late is not None,
        "data": doc.get("data"),
    }
    alarm = Alarm(site, device, eid, etype, at, test=test, mono=mono) if etype in ALARM_TYPES else None
    return Line(LineKind.EVENT, "  ".join(parts), record, alarm)


def gap_text(dev: Device, seq: int, started: dict[str, Any] | None) -> str:
    """The warning for a jump in ``seq`` from ``dev.max_seq``; ``started`` is the event if it is an ``agent_started``.

    An ``agent_started`` carrying ``seq_resumed_above`` explains its jump (the
    device's outbox was deleted or replaced and seq skipped about 1,000): the
    contract says there is nothing to wait for, so the warning must not say
    events are on their way.
    """
    last = dev.max_seq or 0
    data = started.get("data") if started is not None else None
    floor = data.get("seq_resumed_above") if isinstance(data, dict) else None
    head = f"{dev.key}: seq jumped {last} -> {seq}: "
    waiting = f"(outbox pending {opt(dev.pending)}, dropped {opt(dev.dropped)})"
    if isinstance(floor, int) and not isinstance(floor, bool) and last <= floor < seq:
        text = f"{head}its outbox was deleted or replaced and seq resumed above {floor}; nothing to wait for"
        missing = seq - floor - 1
        return text + (f", but {missing} event(s) above {floor} not seen yet {waiting}" if missing else "")
    return f"{head}{seq - last - 1} event(s) not seen yet {waiting}"


def learn_gap(dev: Device, gap: float, *, stretch: bool) -> None:
    """Learn a heartbeat gap; one that ended a silence past the deadline only when the next gap matches it.

    A device that hung for an hour and came back must not teach the
    monitor an hour-long heartbeat (it would then be flagged after three);
    a device with a long heartbeat goes overdue at the default deadline
    until two equal gaps in a row show its interval.
    """
    if gap > _MAX_INTERVAL_S * (1 + _MATCH):
        dev.candidate = None
        return
    if stretch:
        cand, dev.candidate = dev.candidate, gap
        if cand is None or abs(gap - cand) > _MATCH * cand:
            return
        dev.gaps.append(cand)
        dev.candidate = None
    else:
        dev.candidate = None
    dev.gaps.append(gap)
    del dev.gaps[:-GAP_WINDOW]


def opt(value: int | None) -> str:
    """An optional count as printed: ``?`` when the device did not say."""
    return "?" if value is None else str(value)
