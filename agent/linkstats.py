"""Transmission times and link availability, measured the way an alarm receiver measures a path.

EN 50136-1 practice judges an alarm transmission path by the *transmission
time* (event recorded → receiver has it; we use record → broker PUBACK) as a
mean and a 95th percentile, and by *availability* (the share of time the path
could carry an alarm).  This module keeps both with bounded memory:

* per broker (path), a histogram of transmission times in fixed log-spaced
  buckets (4 per doubling, so any quantile read back is at most one bucket,
  about 19 %, above the exact value), kept per minute for the last hour and per
  UTC day for the last 31 days, plus exact count, sum (→ mean) and maximum;
* for the link as a whole (connected to any broker), connected and
  disconnected seconds per hour for the last 7 days, and each outage counted,
  with its length, in the hour it ended.

Windows are wall-clock slots, because the figures must survive restarts and
the monotonic clock does not.  "Last hour" is the current minute and the 59
before it; "31 d" the current UTC day and the 30 before; "24 h" and "7 d" the
current hour and the 23 (167) before; every figure in :meth:`LinkStats.snapshot`
carries its period and the start of its first slot.  A clock that steps back
more than one slot drops the slots now "in the future".

Restarts: :meth:`LinkStats.to_state` is saved with the agent's state file;
:meth:`LinkStats.from_state` counts the whole time between that save and the
next connect as one outage (the centre heard nothing then), joined to an
outage already running at the save.  Up-time after the last save and before a
crash (at most one save interval) is therefore counted as down: the figures
err on the side of the operator.  A Pi restarted with its clock *behind* the
save (no battery clock) may connect before NTP steps the clock over the days it
was off: the restart outage then runs until the clock passes the save, so the
step counts as down, never as up.  Before the very first connect nothing is
counted: an uninstalled device has no path to measure.

The slots themselves (histograms, rings of slots, hours) and their saved
form are :mod:`agent.linkslots`; this module keeps the windows, the outages
and the restarts.

Thread-safe: the sender thread calls :meth:`delivered`, :meth:`link_up` and
:meth:`link_down`; the heartbeat thread calls :meth:`snapshot` and
:meth:`to_state`.  Every call is O(slots) at most and never blocks on I/O.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from agent.events import iso_ms
from agent.linkslots import MAX_LATENCY_S, Hist, Hour, Ring, dump_ring, load_hours, load_ring

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_PATHS = 8  # brokers remembered; the least recently used beyond this are forgotten

_MINUTE, _HOUR, _DAY = 60, 3600, 86400
_HOUR_RING = (_MINUTE, 60)  # slot length (s), slots kept
_MONTH_RING = (_DAY, 31)
_AVAIL_RING = (_HOUR, 7 * 24)
_PERIODS_AV = (("24h", 24), ("7d", 7 * 24))


class _Path:
    def __init__(self) -> None:
        self.minutes = Ring(*_HOUR_RING)
        self.days = Ring(*_MONTH_RING)
        self.used = 0.0


class LinkStats:
    """Transmission times per broker and link availability, with bounded memory; see the module docstring.

    Args:
        now: wall-clock time (s) the agent started; nothing is counted before the first :meth:`link_up`.

    """

    def __init__(self, now: float | None = None) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, _Path] = {}
        self._hours = Ring(*_AVAIL_RING)
        self._since: float | None = None  # first connect ever: availability is counted from here
        self._up: str | None = None  # broker in use, None while disconnected
        self._mark = now or 0.0  # time up to which up/down seconds have been attributed
        self._outage_start: float | None = None
        self._hold: float | None = None  # restored with the clock before this save time: down until it passes
        self.restored_save: float | None = None  # the last run's save time (wall clock), when its figures were kept

    def __repr__(self) -> str:
        with self._lock:
            state = f"up via {self._up}" if self._up else ("down" if self._since is not None else "never connected")
            return f"<LinkStats {state}, {len(self._paths)} paths, {len(self._hours.slots)} hours>"

    # ---- inputs (sender thread) -------------------------------------------

    def delivered(self, broker: str, latency_s: float, now: float) -> None:
        """One event acknowledged by ``broker``, ``latency_s`` seconds after it was recorded."""
        latency_s = 0.0 if math.isnan(latency_s) else min(max(0.0, latency_s), MAX_LATENCY_S)
        with self._lock:
            path = self._paths.get(broker)
            if path is None:
                path = self._paths[broker] = _Path()
            path.used = now
            if len(self._paths) > MAX_PATHS:
                self._forget_paths()
            for ring in (path.minutes, path.days):
                i = ring.index(now)
                slot = ring.slots.get(i)
                if slot is None:
                    ring.prune(now)
                    slot = ring.slots[i] = Hist()
                slot.add(latency_s)

    def link_up(self, broker: str, now: float) -> None:
        """Connected (CONNACK accepted) to ``broker``; ends the running outage, if any."""
        with self._lock:
            if self._since is None:
                self._since = self._mark = now
            self._advance(now)
            if self._outage_start is not None and self._hold is None:
                self._end_outage(now)
            self._up = broker

    def link_down(self, now: float) -> None:
        """The connection is gone (or could not be made); an outage starts unless one is running."""
        with self._lock:
            self._advance(now)
            if self._since is not None and self._outage_start is None:
                self._outage_start = now
            self._up = None

    def _forget_paths(self) -> None:
        while len(self._paths) > MAX_PATHS:
            oldest = min(self._paths, key=lambda b: self._paths[b].used)
            del self._paths[oldest]

    def _advance(self, now: float) -> None:
        """Attribute the seconds since the last mark to connected or disconnected, hour by hour."""
        if self._since is None or now <= self._mark:
            self._mark = max(self._mark, now) if self._since is not None else now
            return
        up = self._up is not None and self._hold is None
        # a long gap (or a clock jumping years ahead) is walked only over the hours still kept
        t = max(self._mark, now - _HOUR * (self._hours.keep + 1))
        while t < now:
            end = min(now, (math.floor(t / _HOUR) + 1) * _HOUR)
            hour = self._hour(t)
            if up:
                hour.up_s += end - t
            else:
                hour.down_s += end - t
            t = end
        self._mark = now
        self._hours.prune(now)
        if self._hold is not None and now > self._hold:
            self._hold = None  # the clock is past the save again: from here it can be trusted
            if self._up is not None and self._outage_start is not None:
                self._end_outage(now)

    def _hour(self, t: float) -> Hour:
        i = self._hours.index(t)
        slot = self._hours.slots.get(i)
        if slot is None:
            slot = self._hours.slots[i] = Hour()
        return slot

    def _end_outage(self, now: float) -> None:
        assert self._outage_start is not None
        length = max(0.0, now - self._outage_start)
        hour = self._hour(now)
        hour.outages += 1
        hour.longest_s = max(hour.longest_s, length)
        self._outage_start = None

    # ---- outputs (heartbeat thread) ----------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """The ``link.stats`` status object; every figure names its period and the start of its first slot."""
        with self._lock:
            self._advance(now)
            docs = {broker: self._path_doc(p, now) for broker, p in sorted(self._paths.items())}
            # a broker with nothing in 31 days (taken out of the config) leaves status, which must stay small
            paths = {broker: doc for broker, doc in docs.items() if doc["31d"]["count"]}
            return {
                "since": iso_ms(self._since) if self._since is not None else None,
                "transmit": paths,
                "availability": {name: self._avail_doc(now, n) for name, n in _PERIODS_AV},
            }

    @staticmethod
    def _path_doc(path: _Path, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, ring in (("1h", path.minutes), ("31d", path.days)):
            start, slots = ring.window(now)
            total = Hist()
            for s in slots:
                total.merge(s)
            p95 = total.quantile(0.95)
            out[name] = {
                "from": iso_ms(start),
                "count": total.count,
                "mean_ms": _ms(total.total / total.count) if total.count else None,
                "p95_ms": _ms(p95) if p95 is not None else None,
                "max_ms": _ms(total.top) if total.count else None,
            }
        return out

    def _avail_doc(self, now: float, hours: int) -> dict[str, Any]:
        start, slots = self._hours.window(now, hours)
        up = _finite(sum(h.up_s for h in slots))
        down = _finite(sum(h.down_s for h in slots))
        outages = sum(h.outages for h in slots)
        longest = max((h.longest_s for h in slots), default=0.0)
        if self._outage_start is not None:
            outages += 1
            longest = max(longest, now - self._outage_start)
        observed = up + down
        return {
            "from": iso_ms(max(start, self._since)) if self._since is not None else None,
            "observed_s": round(observed),
            "percent": round(100.0 * up / observed, 3) if observed > 0 else None,
            "outages": outages,
            "longest_outage_s": round(_finite(longest), 1),
        }

    # ---- persistence ---------------------------------------------------------

    def to_state(self, now: float) -> dict[str, Any]:
        """A JSON-ready copy for the agent's state file (a few tens of kB at most)."""
        with self._lock:
            self._advance(now)
            return {
                "v": STATE_VERSION,
                "saved": max(now, self._mark),  # behind the mark, the clock went back: never save it earlier
                "since": self._since,
                "outage_start": self._outage_start if self._up is None or self._hold is not None else None,
                "paths": {
                    b: {
                        "used": p.used,
                        "minutes": dump_ring(p.minutes.slots.items()),
                        "days": dump_ring(p.days.slots.items()),
                    }
                    for b, p in self._paths.items()
                },
                "hours": [
                    [i, h.up_s, h.down_s, h.outages, round(h.longest_s, 1)] for i, h in self._hours.slots.items()
                ],
            }

    @classmethod
    def from_state(cls, doc: Any, now: float, *, source: str = "the state file") -> LinkStats:
        """Restore saved figures; the time since the save counts as down until the next :meth:`link_up`.

        A missing, foreign or damaged document gives fresh statistics (logged), never an exception.
        A readable one with values no figure can hold (NaN, infinite, negative, an hour of more
        than 3,600 s: a damaged ``source``) loses those slots and keeps the rest, logged once:
        they would make the status invalid JSON, or every snapshot raise.
        """
        stats = cls(now)
        if doc is None:
            return stats
        damaged: list[str] = []
        try:
            stats._load(doc, now, damaged)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            log.warning(
                "link statistics in %s are unreadable (%s: %s); starting them afresh",
                source,
                type(exc).__name__,
                exc,
            )
            return cls(now)
        if damaged:
            log.warning(
                "link statistics in %s have %d damaged parts (first: %s); those are dropped, the rest kept",
                source,
                len(damaged),
                damaged[0],
            )
        return stats

    def _load(self, doc: Any, now: float, damaged: list[str]) -> None:
        if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
            raise ValueError(f"not version {STATE_VERSION} statistics")
        saved = float(doc["saved"])
        if not 0.0 <= saved < math.inf:
            raise ValueError(f"saved at {saved!r}")
        if saved > now + _FUTURE_SAVE_S:  # written by a clock far ahead: held "down" until then, i.e. for good
            raise ValueError(f"saved {saved - now:.0f} s ahead of the clock")
        self.restored_save = saved
        for broker, p in dict(doc["paths"]).items():
            path = _Path()
            path.used = _saved_time(p["used"], f"paths.{broker}.used", damaged) or 0.0
            path.minutes.slots = load_ring(p["minutes"], f"paths.{broker}.minutes", damaged)
            path.days.slots = load_ring(p["days"], f"paths.{broker}.days", damaged)
            for ring in (path.minutes, path.days):
                ring.prune(now)
            self._paths[str(broker)] = path
        self._forget_paths()
        since = doc["since"]
        if (
            since is not None
            and _saved_time(since, "since (availability dropped with it)", damaged, upto=saved) is None
        ):
            return  # availability counts from it: without it, none of the hours can be placed
        self._hours.slots = load_hours(doc["hours"], damaged)
        self._hours.prune(now)
        if since is None:
            self._mark = now
            return
        self._since = float(since)
        start = doc.get("outage_start")
        started = None if start is None else _saved_time(start, "outage_start", damaged, upto=saved)
        self._outage_start = saved if started is None else started
        self._mark = saved  # up to here was counted before the restart
        self._hold = saved if now < saved else None
        self._up = None
        self._advance(now)  # the restart gap is down time


_FUTURE_SAVE_S = 31 * 86400.0  # the longest period the figures keep: a save further ahead is no clock step back


def _ms(seconds: float) -> float | None:
    """Milliseconds to 0.1, or ``None`` for a value that is not finite: the status stays strict JSON."""
    ms = round(seconds * 1000.0, 1)
    return ms if math.isfinite(ms) else None


def _finite(seconds: float) -> float:
    """``seconds``, or 0 if not finite: loading keeps such values out, and the status must stay strict JSON."""
    return seconds if math.isfinite(seconds) else 0.0


def _saved_time(value: Any, what: str, damaged: list[str], *, upto: float = math.inf) -> float | None:
    """A saved wall-clock time, or ``None`` (noted in ``damaged``) if it is not one in ``[0, upto]``."""
    t = float(value)
    if 0.0 <= t <= upto and math.isfinite(t):
        return t
    damaged.append(f"{what} = {value!r:.20}")
    return None
