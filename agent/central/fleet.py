"""The fleet as a monitor sees it: each event once, and a table of devices.

:class:`FleetView` is pure logic: it takes messages as (topic, payload, arrival
time) and returns the lines to print, so it is tested without a broker or a
terminal.  :mod:`agent.central.monitor` owns the network, the clock and the screen.
It is not thread-safe: one thread feeds it.

Decisions:

- **De-dup** on event ``id`` over the last :data:`DEDUP_IDS` ids (an LRU),
  as the contract asks of every consumer; suppressed copies are counted.
- **Heartbeat interval** is learned from the gaps between consecutive
  ``online`` statuses: the largest of the last 32.  The agent restarts its
  heartbeat timer after every status sent on a change, so gaps are at most one
  interval and the largest is the interval.  Until 3 gaps are known the default
  is a floor (the burst of statuses at an agent's start is not a heartbeat);
  after that a gap over 3 intervals is a hang, not a new interval, and is not
  learned.  An ``offline`` status starts the learning again.
- **Overdue**: online, but no status for more than 3 intervals (or
  ``overdue_after_s``).  A retained status counts from its ``ts`` when the
  device's clock was synchronised and ``ts`` is not in the future, so a device
  that went silent before the monitor started is flagged at once.
- All times are wall-clock seconds (``time.time()``): the delay shown for an
  event is arrival minus its ``ts``, which only the wall clock can give.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.central.display import (
    Alarm,
    Line,
    LineKind,
    ago,
    clock_text,
    decode,
    delay_text,
    device_key,
    int_or_none,
    parse_ts,
    span,
    text_or,
    warning_line,
)
from agent.events import iso_ms

DEFAULT_INTERVAL_S = 30.0
OVERDUE_FACTOR = 3.0
DEDUP_IDS = 10_000
ALARM_TYPES = frozenset({"panic", "tamper"})
_GAP_WINDOW = 32
_MIN_GAPS = 3
_KEY_COL = 24
_OFFLINE_WHY = {"lost": "the broker lost its connection (will)", "shutdown": "the agent stopped cleanly"}


class DeviceState(StrEnum):
    ONLINE = "online"
    OVERDUE = "overdue"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class DeviceRow:
    """One row of the device table, as of the ``now`` it was computed for."""

    site: str
    device: str
    state: DeviceState
    reason: str | None
    heard: float | None
    offline_at: float | None
    interval_s: float
    pending: int | None
    last_event: str | None
    last_event_at: float | None

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}"


@dataclass(frozen=True)
class _Msg:
    topic: str
    site: str
    device: str
    rest: tuple[str, ...]
    payload: bytes
    at: float
    retained: bool


@dataclass
class _Device:
    site: str
    device: str
    status: str | None = None
    reason: str | None = None
    heard: float | None = None
    offline_at: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=_GAP_WINDOW))
    pending: int | None = None
    dropped: int | None = None
    flagged: bool = False
    last_event: str | None = None
    last_event_at: float | None = None
    max_seq: int | None = None


class FleetView:
    """Turns status and event messages into printable lines and a device table.

    Args:
        prefix: the topic prefix (``mqtt.topic_prefix``, default ``campus``).
        overdue_after_s: fixed silence after which an online device is overdue,
            in seconds; ``None`` learns it per device (3 x its heartbeat interval).
        default_interval_s: the heartbeat interval assumed until one is learned.
        dedup_ids: how many recent event ids to remember for de-duplication.
        tz: time zone of the printed clock times; ``None`` is the local one.

    """

    def __init__(
        self,
        prefix: str = "campus",
        *,
        overdue_after_s: float | None = None,
        default_interval_s: float = DEFAULT_INTERVAL_S,
        dedup_ids: int = DEDUP_IDS,
        tz: dt.tzinfo | None = None,
    ) -> None:
        self.prefix = prefix
        self.overdue_after_s = overdue_after_s
        self.default_interval_s = default_interval_s
        self._dedup_ids = dedup_ids
        self._tz = tz
        self._devices: dict[str, _Device] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.events = 0
        self.duplicates = 0

    def __repr__(self) -> str:
        return f"<FleetView {self.prefix}: {len(self._devices)} devices, {self.events} events>"

    # ---- input -------------------------------------------------------------

    def feed(self, topic: str, payload: bytes, arrival: float, *, retained: bool = False) -> list[Line]:
        """Take one message; return what to print about it (often nothing)."""
        head = f"{self.prefix}/"
        levels = topic[len(head):].split("/") if topic.startswith(head) else []
        if len(levels) < 3 or not levels[0] or not levels[1]:
            return [self._warn(arrival, f"{topic}: not a {self.prefix}/SITE/DEVICE/... topic; ignored")]
        msg = _Msg(topic, levels[0], levels[1], tuple(levels[2:]), payload, arrival, retained)
        if msg.rest == ("status",):
            return self._status(msg)
        if msg.rest[0] == "event":
            return self._event(msg)
        return []  # replies are the AckDesk's; commands are not shown

    def tick(self, now: float) -> list[Line]:
        """Flag devices that have just become overdue."""
        lines: list[Line] = []
        for dev in self._devices.values():
            if not dev.flagged and self._state(dev, now) is DeviceState.OVERDUE:
                dev.flagged = True
                silent = span(now - dev.heard) if dev.heard is not None else "?"
                limit = (f"overdue after {span(self.overdue_after_s)}" if self.overdue_after_s is not None
                         else f"expected every {span(self._interval(dev))}")
                text = f"no heartbeat for {silent} ({limit})"
                lines.append(self._state_line(dev, now, "OVERDUE", text))
        return lines

    # ---- the table -------------------------------------------------------------

    def rows(self, now: float) -> list[DeviceRow]:
        return [
            DeviceRow(site=d.site, device=d.device, state=self._state(d, now), reason=d.reason, heard=d.heard,
                      offline_at=d.offline_at, interval_s=self._interval(d), pending=d.pending,
                      last_event=d.last_event, last_event_at=d.last_event_at)
            for _, d in sorted(self._devices.items())
        ]

    def table(self, now: float) -> str:
        """The device table as plain text, with a one-line summary on top."""
        rows = self.rows(now)
        count = {s: sum(r.state is s for r in rows) for s in DeviceState}
        head = (f"{len(rows)} devices: {count[DeviceState.ONLINE]} online, {count[DeviceState.OVERDUE]} OVERDUE, "
                f"{count[DeviceState.OFFLINE]} offline, {count[DeviceState.UNKNOWN]} unknown; "
                f"{_count(self.events, 'event')}, {_count(self.duplicates, 'duplicate')} suppressed")
        w = max([_KEY_COL, *(len(r.key) + 2 for r in rows)])
        out = [head, f"{'DEVICE':<{w}}{'STATE':<10}{'LAST HEARTBEAT':<18}{'OUTBOX':<8}LAST EVENT"]
        for r in rows:
            state = {DeviceState.OVERDUE: "OVERDUE", DeviceState.UNKNOWN: "?"}.get(r.state, r.state.value)
            if r.state is DeviceState.OFFLINE:
                beat = f"({r.reason})" + (f" {ago(now - r.offline_at)}" if r.offline_at is not None else "")
            else:
                beat = ago(now - r.heard) if r.heard is not None else "-"
            online = r.state in (DeviceState.ONLINE, DeviceState.OVERDUE)
            box = str(r.pending) if online and r.pending is not None else "-"
            last = f"{r.last_event} {ago(now - r.last_event_at)}" if r.last_event_at is not None else "-"
            out.append(f"{r.key:<{w}}{state:<10}{beat:<18}{box:<8}{last}")
        return "\n".join(out)

    def device_lines(self, now: float) -> list[Line]:
        """The table as one ``device`` line per device, for ``--json``."""
        return [
            Line(LineKind.DEVICE, r.key, {
                "kind": "device", "site": r.site, "device": r.device, "state": r.state.value, "reason": r.reason,
                "heartbeat_age_s": round(now - r.heard, 1) if r.heard is not None else None,
                "interval_s": r.interval_s, "outbox_pending": r.pending, "last_event": r.last_event,
                "last_event_age_s": round(now - r.last_event_at, 1) if r.last_event_at is not None else None,
            })
            for r in self.rows(now)
        ]

    # ---- message kinds -----------------------------------------------------------

    def _event(self, msg: _Msg) -> list[Line]:
        doc, at, site, device = decode(msg.payload), msg.at, msg.site, msg.device
        if isinstance(doc, str):
            return [self._warn(at, f"{msg.topic}: {doc}; ignored")]
        eid = doc.get("id")
        if not isinstance(eid, str) or not eid:
            return [self._warn(at, f"{msg.topic}: event without an id; ignored")]
        if eid in self._seen:
            self._seen.move_to_end(eid)
            self.duplicates += 1
            return []
        self._seen[eid] = None
        if len(self._seen) > self._dedup_ids:
            self._seen.popitem(last=False)
        self.events += 1
        dev = self._device(site, device)
        etype = text_or(doc.get("type"), msg.rest[1] if len(msg.rest) > 1 else "?")
        seq = int_or_none(doc.get("seq"))
        lines: list[Line] = []
        late = None
        if seq is not None and dev.max_seq is not None:
            if seq > dev.max_seq + 1:
                missing = seq - dev.max_seq - 1
                lines.append(self._warn(at, f"{dev.site}/{dev.device}: seq jumped {dev.max_seq} -> {seq}: {missing} "
                                            f"event(s) not seen yet (outbox pending {_opt(dev.pending)}, "
                                            f"dropped {_opt(dev.dropped)})"))
            elif seq < dev.max_seq:
                late = dev.max_seq
        if seq is not None:
            dev.max_seq = max(seq, dev.max_seq or 0)
        dev.last_event, dev.last_event_at = etype, at
        ts = parse_ts(doc.get("ts"))
        delay = at - ts if ts is not None else None
        test, synced = doc.get("test") is True, doc.get("clock_synced") is not False
        parts = [self._clock(at), device_key(site, device), f"{etype:<15}",
                 f"from {text_or(doc.get('source'), '?'):<10}", f"seq {_opt(seq):<6}", "TEST" if test else "    ",
                 f"{delay_text(delay):>8}"]
        if not synced:
            parts.append("clock?")
        if late is not None:
            parts.append(f"late (after seq {late})")
        parts.append(f"id {eid}")
        record = {"kind": "event", "arrived": iso_ms(at), "site": site, "device": device, "id": eid, "seq": seq,
                  "type": etype, "source": doc.get("source"), "test": test, "ts": doc.get("ts"),
                  "clock_synced": synced, "delay_ms": round(delay * 1000) if delay is not None else None,
                  "late": late is not None, "data": doc.get("data")}
        alarm = Alarm(site, device, eid, etype, at) if etype in ALARM_TYPES else None
        lines.append(Line(LineKind.EVENT, "  ".join(parts), record, alarm))
        return lines

    def _status(self, msg: _Msg) -> list[Line]:
        doc, at, retained = decode(msg.payload), msg.at, msg.retained
        if isinstance(doc, str):
            return [self._warn(at, f"{msg.topic}: {doc}; ignored")]
        state = doc.get("state")
        if state not in ("online", "offline"):
            return [self._warn(at, f"{msg.topic}: status with state {state!r}; ignored")]
        dev = self._device(msg.site, msg.device)
        was, was_flagged = dev.status, dev.flagged
        dev.flagged = False
        if state == "offline":
            dev.status, dev.reason = "offline", text_or(doc.get("reason"), "?")
            dev.offline_at = None if retained else at
            dev.gaps.clear()
            if retained or was == "offline":
                return []
            return [self._state_line(dev, at, "OFFLINE", f"{dev.reason}: {_OFFLINE_WHY.get(dev.reason, '?')}")]
        heard = self._heard_at(doc, at, retained=retained)
        if not retained and was == "online" and dev.heard is not None and heard > dev.heard:
            gap = heard - dev.heard
            if len(dev.gaps) < _MIN_GAPS or gap <= OVERDUE_FACTOR * self._interval(dev):
                dev.gaps.append(gap)
        dev.heard = max(heard, dev.heard or heard)
        dev.status, dev.reason, dev.offline_at = "online", None, None
        outbox = doc.get("outbox")
        if isinstance(outbox, dict):
            dev.pending = int_or_none(outbox.get("pending"))
            dev.dropped = int_or_none(outbox.get("dropped"))
        if retained or (was == "online" and not was_flagged):
            return []
        why = "heartbeat back" if was_flagged else "was offline" if was == "offline" else "first status seen"
        return [self._state_line(dev, at, "online", f"({why})")]

    # ---- helpers -------------------------------------------------------------------

    def _device(self, site: str, device: str) -> _Device:
        key = f"{site}/{device}"
        if key not in self._devices:
            self._devices[key] = _Device(site, device)
        return self._devices[key]

    def _interval(self, dev: _Device) -> float:
        if len(dev.gaps) >= _MIN_GAPS:
            return max(dev.gaps)
        return max(self.default_interval_s, max(dev.gaps, default=0.0))

    def _state(self, dev: _Device, now: float) -> DeviceState:
        if dev.status == "offline":
            return DeviceState.OFFLINE
        if dev.status != "online" or dev.heard is None:
            return DeviceState.UNKNOWN
        limit = self.overdue_after_s if self.overdue_after_s is not None else OVERDUE_FACTOR * self._interval(dev)
        return DeviceState.OVERDUE if now - dev.heard > limit else DeviceState.ONLINE

    @staticmethod
    def _heard_at(doc: dict[str, Any], at: float, *, retained: bool) -> float:
        if not retained:
            return at
        ts = parse_ts(doc.get("ts"))
        return ts if ts is not None and doc.get("clock_synced") is True and ts <= at else at

    def _clock(self, at: float) -> str:
        return clock_text(at, self._tz)

    def _state_line(self, dev: _Device, at: float, state: str, text: str) -> Line:
        record = {"kind": "state", "arrived": iso_ms(at), "site": dev.site, "device": dev.device,
                  "state": state.lower(), "reason": dev.reason, "detail": text}
        key = device_key(dev.site, dev.device)
        return Line(LineKind.STATE, f"{self._clock(at)}  {key}  {state:<15}  {text}", record)

    def _warn(self, at: float, text: str) -> Line:
        return warning_line(at, text, self._tz)


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
