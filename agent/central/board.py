"""The monitor's board: one header line, what needs attention, every alarm; the full table on request.

At 20,000 devices a table of every device every ten seconds is unreadable
and costs a scan each time.  The board shows a header with the counts
(kept up to date by :class:`~agent.central.fleet.FleetView`, never counted),
then only the devices that need attention (not online, or under 95 %
availability over 7 days; at most ``limit`` of them, problem first) and
every alarm not yet acknowledged from this monitor.  Each device row shows
its p95 transmission time and 7-day availability
(:mod:`agent.central.linkfigures`), ``-`` when unknown.
The full table, sorted problem first, is printed on request (``t`` + Enter,
or ``--table``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from agent.central.display import Alarm, Line, LineKind, ago, clock_text
from agent.central.linkfigures import UNKNOWN, LinkFigures, avail_text, p95_text
from agent.events import iso_ms

if TYPE_CHECKING:
    import datetime as dt

    from agent.central.fleet import FleetView

ATTENTION_LINES = 40
_KEY_COL = 24


class DeviceState(StrEnum):
    ONLINE = "online"
    OVERDUE = "overdue"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


# Problem first: the order of the attention list and of the full table.
RANK = {DeviceState.OVERDUE: 0, DeviceState.OFFLINE: 1, DeviceState.UNKNOWN: 2, DeviceState.ONLINE: 3}
_SHOWN = {DeviceState.OVERDUE: "OVERDUE", DeviceState.UNKNOWN: "?"}


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
    link: LinkFigures = UNKNOWN

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}"


def _no_photo(_event_id: str) -> str | None:
    return None


def header(
    fleet: FleetView,
    alarms: int,
    now: float,
    tz: dt.tzinfo | None = None,
    *,
    tests: int = 0,
    down_since: float | None = None,
) -> str:
    """``HH:MM:SS.mmm  N devices: a online, b OVERDUE, c offline, d unknown; low availability l; k unack...``.

    ``alarms`` counts real alarms only, ``tests`` the test presses beside
    them.  ``down_since`` (the monitor's own link lost at that wall time)
    puts ``NOT CONNECTED since HH:MM:SS, figures stale`` first: a deaf
    monitor must not look like a quiet fleet.
    """
    n = fleet.counts()
    deaf = f"NOT CONNECTED since {clock_text(down_since, tz)[:8]}, figures stale; " if down_since is not None else ""
    test = f" and {_count(tests, 'test press', 'test presses')}" if tests else ""
    return (
        f"{clock_text(now, tz)}  {deaf}{len(fleet)} devices: {n[DeviceState.ONLINE]} online, "
        f"{n[DeviceState.OVERDUE]} OVERDUE, {n[DeviceState.OFFLINE]} offline, {n[DeviceState.UNKNOWN]} unknown; "
        f"low availability {fleet.low_availability}; "
        f"{_count(alarms, 'unacknowledged alarm')}{test}; {_count(fleet.events, 'event')}, "
        f"{_count(fleet.duplicates, 'duplicate')} suppressed"
    )


def tally(alarms: Sequence[Alarm]) -> tuple[int, int]:
    """(real alarms, test presses) among ``alarms``: a test press is never counted as an alarm."""
    tests = sum(1 for a in alarms if a.test)
    return len(alarms) - tests, tests


def summary(
    fleet: FleetView,
    alarms: Sequence[Alarm],
    now: float,
    *,
    limit: int = ATTENTION_LINES,
    tz: dt.tzinfo | None = None,
    photo_of: Callable[[str], str | None] = _no_photo,
    down_since: float | None = None,
    mono: float | None = None,
) -> str:
    """The header, the devices that need attention (at most ``limit``), then every unacknowledged alarm.

    ``photo_of`` gives an alarm's saved photo by event id (``monitor --snapshots``);
    ``mono`` is ``now`` on the monotonic clock (:class:`~agent.central.fleet.FleetView`).
    """
    rows, total = fleet.attention(now, limit, mono=mono)
    real, tests = tally(alarms)
    out = [header(fleet, real, now, tz, tests=tests, down_since=down_since)]
    if rows:
        out += _table_lines(rows, now)
    if total > len(rows):
        out.append(f"... and {total - len(rows)} more need attention: t + Enter (or --table) prints the full table")
    for a in alarms:
        photo = photo_of(a.event_id)
        out.append(
            f"ALARM  {a.key:<{_KEY_COL - 8}} {a.type:<10}{'TEST  ' if a.test else ''}"
            f"{ago(a.age_s(now, mono)):<18}id {a.event_id} "
            "not acknowledged" + (f"  photo {photo}" if photo is not None else "")
        )
    return "\n".join(out)


def table(
    fleet: FleetView,
    alarms: int,
    now: float,
    tz: dt.tzinfo | None = None,
    *,
    tests: int = 0,
    down_since: float | None = None,
    mono: float | None = None,
) -> str:
    """The header and every device, problem first; ``mono`` is ``now`` on the monotonic clock."""
    top = header(fleet, alarms, now, tz, tests=tests, down_since=down_since)
    return "\n".join([top, *_table_lines(fleet.rows(now, mono=mono), now)])


def summary_lines(
    fleet: FleetView,
    alarms: Sequence[Alarm],
    now: float,
    *,
    full: bool,
    limit: int = ATTENTION_LINES,
    photo_of: Callable[[str], str | None] = _no_photo,
    down_since: float | None = None,
    mono: float | None = None,
) -> list[Line]:
    """For ``--json``: a ``summary`` record, then a ``device`` record per device shown, then the alarms."""
    n = fleet.counts()
    real, tests = tally(alarms)
    rows, total = (fleet.rows(now, mono=mono), len(fleet)) if full else fleet.attention(now, limit, mono=mono)
    record = {
        "kind": "summary",
        "at": iso_ms(now),
        "devices": len(fleet),
        **{s.value: n[s] for s in DeviceState},
        "low_availability": fleet.low_availability,
        "unacknowledged_alarms": real,
        "unacknowledged_tests": tests,
        "connected": down_since is None,
        "disconnected_since": iso_ms(down_since) if down_since is not None else None,
        "events": fleet.events,
        "duplicates": fleet.duplicates,
        "listed": len(rows),
        "not_listed": total - len(rows),
    }
    lines = [Line(LineKind.SUMMARY, "summary", record)]
    lines += [device_line(r, now) for r in rows]
    lines += [
        Line(
            LineKind.ALARM,
            a.event_id,
            {
                "kind": "alarm",
                "site": a.site,
                "device": a.device,
                "type": a.type,
                "test": a.test,
                "id": a.event_id,
                "arrived": iso_ms(a.arrival),
                "acknowledged": False,
                "photo": photo_of(a.event_id),
            },
        )
        for a in alarms
    ]
    return lines


def device_line(r: DeviceRow, now: float) -> Line:
    return Line(
        LineKind.DEVICE,
        r.key,
        {
            "kind": "device",
            "site": r.site,
            "device": r.device,
            "state": r.state.value,
            "reason": r.reason,
            "heartbeat_age_s": round(now - r.heard, 1) if r.heard is not None else None,
            "interval_s": r.interval_s,
            "outbox_pending": r.pending,
            "last_event": r.last_event,
            "last_event_age_s": round(now - r.last_event_at, 1) if r.last_event_at is not None else None,
            **r.link.record(),
            "problem": r.link.problem(),
        },
    )


def _table_lines(rows: Sequence[DeviceRow], now: float) -> list[str]:
    w = max([_KEY_COL, *(len(r.key) + 2 for r in rows)])
    titles = f"{'DEVICE':<{w}}{'STATE':<10}{'LAST HEARTBEAT':<18}{'OUTBOX':<8}{'P95':<14}{'AVAIL 7D':<10}"
    out = [f"{titles}{'LAST EVENT':<24}PROBLEM"]
    for r in rows:
        state = _SHOWN.get(r.state, r.state.value)
        if r.state is DeviceState.OFFLINE:
            beat = f"({r.reason})" + (f" {ago(now - r.offline_at)}" if r.offline_at is not None else "")
        else:
            beat = ago(now - r.heard) if r.heard is not None else "-"
        online = r.state in (DeviceState.ONLINE, DeviceState.OVERDUE)
        box = str(r.pending) if online and r.pending is not None else "-"
        last = f"{r.last_event} {ago(now - r.last_event_at)}" if r.last_event_at is not None else "-"
        figures = f"{_cell(p95_text(r.link), 14)}{avail_text(r.link.avail_7d):<10}"
        line = f"{r.key:<{w}}{state:<10}{beat:<18}{box:<8}{figures}"
        problem = r.link.problem()
        out.append(f"{line}{_cell(last, 24)}{problem}" if problem else f"{line}{last}")
    return out


def _cell(text: str, width: int) -> str:
    """``text`` padded to ``width``, with at least one space after it even when it is wider."""
    return f"{text:<{width - 1}} "


def _count(n: int, noun: str, nouns: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {nouns or noun + 's'}"
