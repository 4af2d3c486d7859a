"""A device's transmission time and availability, as the monitor shows them (issue 13).

The agent publishes ``link.stats`` in its status (docs/contract.md, "Status
``link.stats``").  The monitor keeps two figures per device from its latest
online status, read here from a payload it cannot trust:

- **p95**: the worst 95th-percentile transmission time (record → broker
  PUBACK, ms) over the device's broker paths in the last hour; when no path
  carried an event in the last hour, the worst over 31 days.  The figure keeps
  its period, and the board prints it ("91 ms 31d"): every figure says over
  which period it was measured.
- **avail 7d**: the share of the last 7 days the device was connected to a
  broker, and how many seconds of those 7 days it observed.

A device under :data:`LOW_AVAILABILITY_PERCENT` with at least
:data:`MIN_OBSERVED_S` observed needs attention: an hour is the least that
makes a percentage worth an operator's time (a device that just came up and
lost its link for a minute would read 50 %).  :class:`~agent.central.fleet.FleetView`
keeps the figures of each device's latest online status (a status without
``link.stats`` makes them unknown; an offline will, which has none, keeps
them), keeps the count of low devices as the flag changes, and prints a line
when it changes (not for retained statuses, which fill the board quietly).

Every number is checked (type, finite, range) before use; a payload that
fails gives a reason, never an exception, and no figures.  The cost is bounded
by the payload (at most :data:`MAX_PATHS` paths), never by the fleet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agent.central.display import Line, LineKind, device_key, escape
from agent.events import iso_ms

LOW_AVAILABILITY_PERCENT = 95.0
MIN_OBSERVED_S = 3600
MAX_PATHS = 16  # the agent keeps at most 8; more is not an agent's document
MAX_MS = 1e13  # what an agent sends at most (agent.linkslots.MAX_LATENCY_S): a p95 over 35 days is the maximum
MAX_OBSERVED_S = 169 * 3600  # 168 hour slots, plus the one a clock step may leave ahead
MAX_COUNT = 2**53


@dataclass(frozen=True, slots=True)
class LinkFigures:
    """What the monitor shows of one status's ``link.stats``; ``None`` where unknown.

    Args:
        p95_ms: worst p95 transmission time over the broker paths, in ms.
        p95_period: ``"1h"`` or ``"31d"``, the period ``p95_ms`` was measured over.
        avail_7d: percent of the last 7 days connected to a broker.
        observed_7d_s: seconds of those 7 days the agent counted.

    """

    p95_ms: float | None = None
    p95_period: str | None = None
    avail_7d: float | None = None
    observed_7d_s: float | None = None

    @property
    def low(self) -> bool:
        """True when the 7-day availability is under 95 % over at least an hour observed."""
        return (
            self.avail_7d is not None
            and self.observed_7d_s is not None
            and self.observed_7d_s >= MIN_OBSERVED_S
            and self.avail_7d < LOW_AVAILABILITY_PERCENT
        )

    def problem(self) -> str | None:
        """The attention list's reason, e.g. ``availability 93.2 % over 7 d``; ``None`` when fine."""
        return f"availability {avail_text(self.avail_7d)} over 7 d" if self.low else None

    def record(self) -> dict[str, Any]:
        """The ``--json`` device record's fields."""
        return {
            "p95_ms": self.p95_ms,
            "p95_period": self.p95_period,
            "avail_7d_percent": self.avail_7d,
            "avail_7d_observed_s": self.observed_7d_s,
            "low_availability": self.low,
        }


UNKNOWN = LinkFigures()


class _BadStatsError(ValueError):
    """A ``link.stats`` value the monitor will not show; the message names the key."""


def read_link_stats(status: dict[str, Any]) -> LinkFigures | str:
    """The figures in an online status document, or why they cannot be shown.

    A status without ``link.stats`` (an older agent) gives :data:`UNKNOWN`.
    """
    link = status.get("link")
    stats = link.get("stats") if isinstance(link, dict) else None
    if stats is None:
        return UNKNOWN
    try:
        if not isinstance(stats, dict):
            raise _BadStatsError(" is not an object")
        p95, period = _worst_p95(stats.get("transmit", {}))
        avail, observed = _availability(stats.get("availability", {}))
    except _BadStatsError as exc:
        return f"link.stats{exc}"
    if p95 is None and avail is None:
        return UNKNOWN
    return LinkFigures(p95, period, avail, observed)


def _worst_p95(transmit: object) -> tuple[float | None, str | None]:
    if not isinstance(transmit, dict):
        raise _BadStatsError(".transmit is not an object")
    if len(transmit) > MAX_PATHS:
        raise _BadStatsError(f".transmit has {len(transmit)} broker paths (at most {MAX_PATHS})")
    for period in ("1h", "31d"):
        worst: float | None = None
        for broker, doc in transmit.items():
            where = f".transmit.{escape(str(broker)[:60])}.{period}"
            if not isinstance(doc, dict) or not isinstance(doc.get(period), dict):
                raise _BadStatsError(f"{where} is not an object")
            fig = doc[period]
            count = _number(fig.get("count"), f"{where}.count", 0, MAX_COUNT, integer=True)
            p95 = _number(fig.get("p95_ms"), f"{where}.p95_ms", 0, MAX_MS)
            if count and p95 is not None:
                worst = p95 if worst is None else max(worst, p95)
        if worst is not None:
            return worst, period
    return None, None


def _availability(availability: object) -> tuple[float | None, float | None]:
    if not isinstance(availability, dict):
        raise _BadStatsError(".availability is not an object")
    week = availability.get("7d")
    if week is None:
        return None, None
    if not isinstance(week, dict):
        raise _BadStatsError(".availability.7d is not an object")
    percent = _number(week.get("percent"), ".availability.7d.percent", 0, 100)
    observed = _number(week.get("observed_s"), ".availability.7d.observed_s", 0, MAX_OBSERVED_S)
    return (percent, observed) if percent is not None and observed is not None else (None, None)


def _number(value: object, where: str, low: float, high: float, *, integer: bool = False) -> float | None:
    """``value`` if ``None`` or a finite number in ``[low, high]``; else :class:`_BadStatsError` naming ``where``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise _BadStatsError(f"{where} is not {'an integer' if integer else 'a number'}")
    if not (low <= value <= high and (isinstance(value, int) or math.isfinite(value))):  # an int may not fit a float
        raise _BadStatsError(f"{where} = {value!r:.20} is out of range ({low:g} to {high:g})")
    return float(value)


def p95_text(f: LinkFigures) -> str:
    """``76 ms`` over the last hour, ``91 ms 31d`` when it fell back to 31 days, ``-`` when unknown."""
    if f.p95_ms is None:
        return "-"
    value = f"{f.p95_ms:.1f}" if f.p95_ms < 10 else f"{f.p95_ms:.0f}"
    return f"{value} ms" if f.p95_period == "1h" else f"{value} ms {f.p95_period}"


def avail_text(percent: float | None) -> str:
    """``99.9 %``, rounded *down* to 0.1 so that 94.96 never reads as 95.0; ``-`` when unknown."""
    if percent is None:
        return "-"
    return f"{math.floor(percent * 10 + 1e-9) / 10:.1f} %"  # 1e-9: 93.2 * 10 may come out as 931.99...


def availability_line(site: str, device: str, f: LinkFigures, at: float, clock: str) -> Line:
    """The line printed when a device's 95 % flag changes (``clock``: ``at`` as the monitor prints times)."""
    if f.low:
        word, text = "LOW AVAIL", f"{f.problem()} (under 95 %)"
    elif f.avail_7d is None:
        word, text = "avail ?", "availability over 7 d no longer known (was under 95 %)"
    else:
        word, text = "avail ok", f"availability {avail_text(f.avail_7d)} over 7 d (95 % or more again)"
    record = {
        "kind": "availability",
        "arrived": iso_ms(at),
        "site": site,
        "device": device,
        "low": f.low,
        "avail_7d_percent": f.avail_7d,
        "avail_7d_observed_s": f.observed_7d_s,
        "detail": text,
    }
    return Line(LineKind.AVAILABILITY, f"{clock}  {device_key(site, device)}  {word:<15}  {text}", record)
