"""One fleet message read: its topic's parts, the device it updates, an event's checks and printed line.

:class:`~agent.central.fleet.FleetView` keeps the state (devices, de-dup,
deadlines, counts) and decides what changed; this module holds the values it
keeps per device and the pure parts of reading an event: whether the fields
the contract restricts match the topic (:func:`restricted`) and the line and
JSON record printed for it (:func:`event_line`).  Nothing here looks at more
than one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.central.board import DeviceState
from agent.central.display import Alarm, Line, LineKind, delay_text, device_key, escape, parse_ts, text_or, valid_type
from agent.central.linkfigures import UNKNOWN, LinkFigures
from agent.events import iso_ms

ALARM_TYPES = frozenset({"panic", "tamper"})
MIN_GAPS = 3  # gaps learned before the learned interval is trusted below the default
MIN_GAP_S = 5.0  # the agent's smallest heartbeat.interval_s: a shorter gap is a burst of changes, not learned
GAP_HOLD_S = 7200.0  # the largest gap is kept for two to four hours: a burst of changes cannot push it out
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
    peak: float = 0.0  # the largest heartbeat gap learned since ``peak_since``
    peak_before: float = 0.0  # the largest in the window before that one
    peak_since: float = 0.0  # monotonic start of the current window
    learned: int = 0  # gaps learned since the device came online, counted up to MIN_GAPS
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
    events are on their way.  One carrying ``intake_recovered`` may have lost
    alarms for good: the warning must not promise them either
    (:func:`started_warnings` says more).
    """
    last = dev.max_seq or 0
    data = started.get("data") if started is not None else None
    floor = data.get("seq_resumed_above") if isinstance(data, dict) else None
    lost = "; some may be alarms lost at start, not late (intake unreadable)" if _intake(data) is not None else ""
    head = f"{dev.key}: seq jumped {last} -> {seq}: "
    waiting = f"(outbox pending {opt(dev.pending)}, dropped {opt(dev.dropped)})"
    if isinstance(floor, int) and not isinstance(floor, bool) and last <= floor < seq:
        text = f"{head}its outbox was deleted or replaced and seq resumed above {floor}; nothing to wait for"
        missing = seq - floor - 1
        return text + (f", but {missing} event(s) above {floor} not seen yet {waiting}" if missing else "") + lost
    return f"{head}{seq - last - 1} event(s) not seen yet {waiting}{lost}"


def started_warnings(key: str, doc: dict[str, Any]) -> list[str]:
    """What an ``agent_started`` says an operator must hear: alarms lost to its intake, an outbox not its own.

    Neither shows as a gap in ``seq`` that fills later: the contract says to
    raise both to an operator.  Every text the device sent is escaped.
    """
    data = doc.get("data")
    seq = doc.get("seq")
    below = f"seq {seq}" if isinstance(seq, int) and not isinstance(seq, bool) else "this start"
    texts: list[str] = []
    intake = _intake(data)
    if intake is not None:
        blocks = intake.get("unreadable_blocks")
        count = f" ({blocks} block(s))" if isinstance(blocks, int) and not isinstance(blocks, bool) else ""
        aside = intake.get("moved_aside")
        where = f"; the file was moved aside to {escape(aside[:200])}" if isinstance(aside, str) else ""
        texts.append(
            f"{key}: intake unreadable at start{count}: alarms before {below} may be lost, not late, and "
            f"outbox.dropped does not count them{where}; tell an operator and check the device's disk"
        )
    foreign = data.get("outbox_foreign") if isinstance(data, dict) else None
    if isinstance(foreign, dict):
        owner = escape(text_or(foreign.get("owner"), "?")[:140])
        aside = foreign.get("moved_aside")
        where = f" to {escape(aside[:200])}" if isinstance(aside, str) else ""
        texts.append(
            f"{key}: the outbox found at start was written by '{owner}' (a cloned SD card or a changed id): "
            f"its events were moved aside{where} unsent and will not arrive; check the device's identity"
        )
    return texts


def _intake(data: object) -> dict[str, Any] | None:
    intake = data.get("intake_recovered") if isinstance(data, dict) else None
    return intake if isinstance(intake, dict) else None


def learn_gap(dev: Device, gap: float, *, stretch: bool, at: float) -> None:
    """Learn a heartbeat gap ending at monotonic ``at``; one ending a silence past the deadline when the next matches.

    A device that hung for an hour and came back must not teach the
    monitor an hour-long heartbeat (it would then be flagged after three);
    a device with a long heartbeat goes overdue at the default deadline
    until two equal gaps in a row show its interval.  A gap under
    :data:`MIN_GAP_S` is a status sent on a change, never a heartbeat: not
    learned, and a burst of them cannot lower what was learned.
    """
    if gap < MIN_GAP_S:
        return
    if gap > _MAX_INTERVAL_S * (1 + _MATCH):
        dev.candidate = None
        return
    if stretch:
        cand, dev.candidate = dev.candidate, gap
        if cand is None or abs(gap - cand) > _MATCH * cand:
            return
        _take(dev, cand, at)
        dev.candidate = None
    else:
        dev.candidate = None
    _take(dev, gap, at)


def learned_gap(dev: Device) -> float:
    """The largest gap learned over the last two to four hours (0 when none): the heartbeat interval.

    The agent restarts its heartbeat timer after each status it sends on a
    change, so every gap is at most one interval, and the largest is it.
    """
    return max(dev.peak, dev.peak_before)


def forget_gaps(dev: Device) -> None:
    """Start learning again (the device went offline: it may come back with another interval)."""
    dev.peak = dev.peak_before = 0.0
    dev.learned = 0
    dev.candidate = None


def _take(dev: Device, gap: float, at: float) -> None:
    """Keep ``gap`` in the current window; a window older than :data:`GAP_HOLD_S` becomes the one before."""
    if dev.learned == 0 or at - dev.peak_since >= GAP_HOLD_S:
        dev.peak_before, dev.peak, dev.peak_since = dev.peak, 0.0, at
    dev.peak = max(dev.peak, gap)
    dev.learned = min(dev.learned + 1, MIN_GAPS)


def opt(value: int | None) -> str:
    """An optional count as printed: ``?`` when the device did not say."""
    return "?" if value is None else str(value)
