"""The fleet as a monitor sees it: each event once, and a table of devices.

:class:`FleetView` is pure logic: it takes messages as (topic, payload, arrival
time) and returns the lines to print, so it is tested without a broker or a
terminal.  :mod:`agent.central.monitor` owns the network, the clock and the screen.
It is not thread-safe: one thread feeds it.

Decisions:

- **Events** (:mod:`agent.central.fleetevents`, mixed in): de-dup on (device,
  event ``id``), the last 512 ids per device and :data:`DEDUP_IDS` in all
  (:class:`~agent.central.fleetevents.RecentIds`), as the contract asks
  of every consumer; suppressed copies are counted.  An ``agent_started``
  saying alarms may be lost (``intake_recovered``) or the outbox was another
  device's (``outbox_foreign``) adds a warning for the operator.
- **Heartbeat interval** is the status's ``heartbeat_s`` when it names one,
  otherwise learned from the gaps between live ``online`` statuses
  (:mod:`agent.central.heartbeats` says how).
  A gap that ends a silence past the deadline may be a hang: it is learned only
  when the next gap matches it (a long heartbeat repeats, a hang does not), and
  never over an hour, the agent's largest interval.  A gap from a retained
  status's ``ts`` is never learned.  An ``offline`` status starts again.
- **Retained statuses** (sent by the broker at every subscribe) are quiet for
  a device's first status; after a reconnect one that changes a known
  device's state is announced, and a copy of a status already taken (same
  ``ts``, or not newer) changes nothing.  A retained *event* is never an alarm.
- **Overdue**: online, but no status for more than 3 intervals (or
  ``overdue_after_s``).  A retained status counts from its ``ts`` when the
  device's clock was synchronised and ``ts`` is not in the future, so a device
  that went silent before the monitor started is flagged at once.
- **Cost per message does not grow with the fleet.**  Each device's next
  deadline sits in :class:`~agent.central.deadlines.Deadlines` (a heap with
  lazy deletion); :meth:`FleetView.tick` pops only what has passed, and the
  counts behind the header line are kept as states change, never by a scan.
  Only the full table (on request) looks at every device.
- **Link figures** (:mod:`agent.central.linkfigures`, which says how): a device
  under 95 % availability over 7 days needs attention like one not online.
- **Nothing a device sends is printed raw**: text fields are escaped
  (:func:`~agent.central.display.escape`), and the fields the contract
  restricts (site, device, event id, type) are checked first; a message that
  fails becomes one warning naming its topic.
- **Two clocks.**  Each time passed in is wall-clock seconds (``time.time()``)
  for the printed times and what is compared with a device's ``ts`` (an
  event's delay, a retained status's age), plus ``mono`` (``time.monotonic()``)
  for every span: deadlines, gaps, ages.  A step of the monitor host's clock
  (NTP, a resumed VM) then neither hides a dead device nor flags a live
  fleet.  ``mono`` defaults to the wall time given: one fake clock for tests.
"""

from __future__ import annotations

import datetime as dt
import heapq
from typing import Any

from agent.central.board import RANK, DeviceRow, DeviceState
from agent.central.deadlines import Deadlines
from agent.central.display import (
    Line,
    LineKind,
    clock_text,
    decode,
    device_key,
    escape,
    int_or_none,
    span,
    text_or,
    valid_id,
    warning_line,
)
from agent.central.fleetevents import FleetEvents
from agent.central.fleetmsg import Device, Msg, forget_gaps, learn_gap, started_warnings
from agent.central.heartbeats import heard_at, interval, interval_named, same_status
from agent.central.linkfigures import UNKNOWN, availability_line, read_link_stats
from agent.events import iso_ms

DEFAULT_INTERVAL_S = 30.0
OVERDUE_FACTOR = 3.0
DEDUP_IDS = 10_000
_HEARD = (DeviceState.ONLINE, DeviceState.OVERDUE)
_BACK = {
    DeviceState.OVERDUE: "(heartbeat back)",
    DeviceState.OFFLINE: "(was offline)",
    DeviceState.UNKNOWN: "(first status seen)",
}
_OFFLINE_WHY = {"lost": "the broker lost its connection (will)", "shutdown": "the agent stopped cleanly"}


class FleetView(FleetEvents):
    """Turns status and event messages into printable lines and device counts.

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
        self._devices: dict[str, Device] = {}
        self._status_topics: dict[str, Device] = {}  # a known device's status topic: checked once, not per heartbeat
        self._deadlines = Deadlines()
        self._counts = dict.fromkeys(DeviceState, 0)
        self._attention: set[str] = set()
        self.low_availability = 0
        self.events = 0
        self.duplicates = 0

    def __repr__(self) -> str:
        return f"<FleetView {self.prefix}: {len(self._devices)} devices, {self.events} events>"

    @property
    def work(self) -> int:
        """Heap steps done so far: what tests count to show a message costs O(1), not O(fleet)."""
        return self._deadlines.ops

    # ---- input -------------------------------------------------------------

    def feed(
        self, topic: str, payload: bytes, arrival: float, *, retained: bool = False, mono: float | None = None
    ) -> list[Line]:
        """Take one message that arrived at wall time ``arrival`` (monotonic ``mono``); return what to print."""
        m = arrival if mono is None else mono
        known = self._status_topics.get(topic)
        if known is not None:  # the common case: a heartbeat from a device already shown
            return self._status(topic, known.site, known.device, payload, arrival, mono=m, retained=retained)
        head = f"{self.prefix}/"
        levels = topic[len(head) :].split("/") if topic.startswith(head) else []
        if len(levels) < 3 or not levels[0] or not levels[1]:
            return [self._warn(arrival, f"{escape(topic)}: not a {self.prefix}/SITE/DEVICE/... topic; ignored")]
        if not (valid_id(levels[0]) and valid_id(levels[1])):
            return [
                self._warn(
                    arrival,
                    f"{escape(topic)}: site or device is not a contract id (lower-case letters, digits, '-'); ignored",
                )
            ]
        msg = Msg(topic, levels[0], levels[1], tuple(levels[2:]), payload, arrival, retained)
        if msg.rest == ("status",):
            return self._status(topic, msg.site, msg.device, payload, arrival, mono=m, retained=retained)
        if msg.rest[0] == "event":
            return self._retained_event(msg) if retained else self._told(msg, self._event(msg, m, alarm_mono=mono))
        return []  # replies are the AckDesk's; commands are not shown

    def _told(self, msg: Msg, lines: list[Line]) -> list[Line]:
        """``lines`` of a new event, and after an ``agent_started`` what it says the operator must hear."""
        if msg.rest != ("event", "agent_started") or not any(ln.kind is LineKind.EVENT for ln in lines):
            return lines  # not a start, or a copy, or refused: nothing more
        doc = decode(msg.payload)  # again, for the one rare event type that needs it
        texts = started_warnings(f"{msg.site}/{msg.device}", doc) if isinstance(doc, dict) else []
        return lines + [self._warn(msg.at, text) for text in texts]

    def tick(self, now: float, *, mono: float | None = None) -> list[Line]:
        """Flag devices whose heartbeat deadline has passed; costs one heap pop per deadline passed."""
        m = now if mono is None else mono
        lines: list[Line] = []
        for key in self._deadlines.pop_passed(m):
            dev = self._devices[key]
            if dev.state is not DeviceState.ONLINE:
                continue
            self._set_state(dev, DeviceState.OVERDUE)
            silent = span(m - dev.heard) if dev.heard is not None else "?"
            limit = (
                f"overdue after {span(self.overdue_after_s)}"
                if self.overdue_after_s is not None
                else f"expected every {span(interval(dev, self.default_interval_s))}"
            )
            lines.append(self._state_line(dev, now, "OVERDUE", f"no heartbeat for {silent} ({limit})"))
        return lines

    # ---- what the board shows ----------------------------------------------------

    def counts(self) -> dict[DeviceState, int]:
        """Devices per state as of the last :meth:`tick`; kept up to date, never counted."""
        return dict(self._counts)

    def __len__(self) -> int:
        return len(self._devices)

    def attention(self, now: float, limit: int, *, mono: float | None = None) -> tuple[list[DeviceRow], int]:
        """Up to ``limit`` rows of devices not online or under 95 % availability, problem first, and how many."""
        m = now if mono is None else mono
        keys = heapq.nsmallest(limit, self._attention, key=lambda k: (RANK[self._devices[k].state], k))
        return [self._row(self._devices[k], now, m) for k in keys], len(self._attention)

    def rows(self, now: float, *, site: str | None = None, mono: float | None = None) -> list[DeviceRow]:
        """Every device (or one site's), problem first: the full table, a scan on request only."""
        m = now if mono is None else mono
        rows = [self._row(d, now, m) for d in self._devices.values() if site is None or d.site == site]
        return sorted(rows, key=lambda r: (RANK[r.state], r.key))

    def _row(self, d: Device, now: float, mono: float) -> DeviceRow:
        """``d`` as of ``now``; its times are put on the wall clock as it reads now, so ages are true spans."""
        state = d.state
        due = self._deadlines.due(f"{d.site}/{d.device}")
        if state is DeviceState.ONLINE and due is not None and due < mono:
            state = DeviceState.OVERDUE  # between ticks: the table is exact at its own ``now``
        return DeviceRow(
            site=d.site,
            device=d.device,
            state=state,
            reason=d.reason,
            heard=_on_wall(d.heard, now, mono),
            offline_at=_on_wall(d.offline_at, now, mono),
            interval_s=interval(d, self.default_interval_s),
            pending=d.pending,
            last_event=d.last_event,
            last_event_at=_on_wall(d.last_event_at, now, mono),
            link=d.link,
        )

    # ---- message kinds -----------------------------------------------------------

    def _status(  # the message's parts, unpacked once by feed(); ``at`` wall, ``mono`` monotonic
        self, topic: str, site: str, device: str, payload: bytes, at: float, *, mono: float, retained: bool
    ) -> list[Line]:
        doc = decode(payload)
        if isinstance(doc, str):
            return [self._warn(at, f"{escape(topic)}: {doc}; ignored")]
        state = doc.get("state")
        if state not in ("online", "offline"):
            return [self._warn(at, f"{escape(topic)}: status with state '{escape(str(state)[:40])}'; ignored")]
        for name, expected in (("site", site), ("device", device)):
            value = doc.get(name, expected)
            if value != expected:
                return [
                    self._warn(
                        at,
                        f"{escape(topic)}: {name} '{escape(str(value)[:70])}' is not the topic's "
                        f"('{expected}'); ignored",
                    )
                ]
        dev = self._device(site, device)
        self._status_topics[topic] = dev
        was = dev.state
        quiet = retained and was is DeviceState.UNKNOWN  # a device's first status read at subscribe: on the board
        if state == "offline":
            return self._offline(dev, doc, at, mono, retained=retained, quiet=quiet)
        heard, ts = heard_at(doc, at, mono, retained=retained), doc.get("ts")
        if retained and was in _HEARD and dev.heard is not None and (heard <= dev.heard or same_status(ts, dev.ts)):
            return []  # a status already taken, resent by the broker at a subscribe: nothing changed
        if not retained and dev.heard_live and was in _HEARD and dev.heard is not None and heard > dev.heard:
            due = self._deadlines.due(dev.key)
            stretch = was is DeviceState.OVERDUE or (due is not None and heard > due)
            learn_gap(dev, heard - dev.heard, stretch=stretch, at=heard)
        if dev.heard is None or heard >= dev.heard:
            dev.heard, dev.heard_live = heard, not retained
        dev.ts = ts
        dev.announced = interval_named(doc)
        dev.reason, dev.offline_at = None, None
        self._set_state(dev, DeviceState.ONLINE)
        limit = (
            self.overdue_after_s
            if self.overdue_after_s is not None
            else OVERDUE_FACTOR * interval(dev, self.default_interval_s)
        )
        self._deadlines.set(dev.key, dev.heard + limit)
        outbox = doc.get("outbox")
        if isinstance(outbox, dict):
            dev.pending = int_or_none(outbox.get("pending"))
            dev.dropped = int_or_none(outbox.get("dropped"))
        lines = [] if quiet or was is DeviceState.ONLINE else [self._state_line(dev, at, "online", _BACK[was])]
        return lines + self._figures(dev, doc, topic, at, quiet=quiet)

    def _offline(
        self, dev: Device, doc: dict[str, Any], at: float, mono: float, *, retained: bool, quiet: bool
    ) -> list[Line]:
        reason = escape(text_or(doc.get("reason"), "?")[:40])
        if dev.state is DeviceState.OFFLINE and (retained or reason == dev.reason):
            return []  # said already; a redelivered will keeps the time it was first seen
        self._deadlines.cancel(dev.key)
        self._set_state(dev, DeviceState.OFFLINE)
        dev.reason, dev.offline_at = reason, None if retained else mono
        forget_gaps(dev)
        if quiet:
            return []
        return [self._state_line(dev, at, "OFFLINE", f"{dev.reason}: {_OFFLINE_WHY.get(dev.reason, '?')}")]

    def _figures(self, dev: Device, doc: dict[str, Any], topic: str, at: float, *, quiet: bool) -> list[Line]:
        """Take the status's link figures; a line when they turn unreadable or the 95 % flag changes."""
        got = read_link_stats(doc)
        lines: list[Line] = []
        if isinstance(got, str) and not dev.stats_bad:  # once, not at every heartbeat
            lines.append(self._warn(at, f"{escape(topic)}: {got}; figures shown as '-'"))
        dev.stats_bad = isinstance(got, str)
        figures = UNKNOWN if isinstance(got, str) else got
        was_low, dev.link = dev.link.low, figures
        if figures.low != was_low:
            self.low_availability += 1 if figures.low else -1
            self._file(dev)
            if not quiet:
                lines.append(availability_line(dev.site, dev.device, figures, at, self._clock(at)))
        return lines

    # ---- helpers -------------------------------------------------------------------

    def _device(self, site: str, device: str) -> Device:
        key = f"{site}/{device}"
        dev = self._devices.get(key)
        if dev is None:
            dev = self._devices[key] = Device(site, device, key)
            self._counts[DeviceState.UNKNOWN] += 1
            self._attention.add(key)
        return dev

    def _set_state(self, dev: Device, state: DeviceState) -> None:
        if dev.state is state:
            return
        self._counts[dev.state] -= 1
        self._counts[state] += 1
        dev.state = state
        self._file(dev)

    def _file(self, dev: Device) -> None:
        """Keep the attention set right: devices not online, and those under 95 % availability."""
        key = dev.key
        if dev.state is DeviceState.ONLINE and not dev.link.low:
            self._attention.discard(key)
        else:
            self._attention.add(key)

    def _clock(self, at: float) -> str:
        return clock_text(at, self._tz)

    def _state_line(self, dev: Device, at: float, state: str, text: str) -> Line:
        record = {
            "kind": "state",
            "arrived": iso_ms(at),
            "site": dev.site,
            "device": dev.device,
            "state": state.lower(),
            "reason": dev.reason,
            "detail": text,
        }
        key = device_key(dev.site, dev.device)
        return Line(LineKind.STATE, f"{self._clock(at)}  {key}  {state:<15}  {text}", record)

    def _warn(self, at: float, text: str) -> Line:
        return warning_line(at, text, self._tz)


def _on_wall(t: float | None, now: float, mono: float) -> float | None:
    """Monotonic time ``t`` as the wall clock reading ``now`` (at monotonic ``mono``) puts it."""
    return None if t is None else now + (t - mono)
