"""The slots the link figures are kept in, and their saved form: bounded memory, whatever the traffic.

:mod:`agent.linkstats` measures; this module holds what it measures into, so
the arithmetic of a slot can be read (and tested) apart from the rules of
windows, outages and restarts:

* :class:`Hist`: one slot's transmission times, as exact count, sum and
  maximum plus counts in fixed log-spaced buckets (4 per doubling from 1 ms,
  so a quantile read back is at most one bucket, about 19 %, above the exact
  value);
* :class:`Ring`: slots of a fixed width in wall-clock seconds, at most a fixed
  number of them;
* :class:`Hour`: one hour of the link's availability;
* :func:`dump_ring`, :func:`load_ring` and :func:`load_hours`: the state-file
  form, where a value no slot can hold (NaN, negative, an hour longer than an
  hour) loses that slot only, noted for the caller to log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

BUCKETS_PER_DOUBLING = 4
BUCKET_FLOOR_S = 0.001  # bucket 0 holds everything below 1 ms
BUCKETS = 4 * 32  # bucket i ends at 2**(i/4) ms; the last holds everything from 2**31.5 ms (about 35 days) up
MAX_LATENCY_S = 1e10  # about 317 years: only a broken clock gives a longer wait, and it counts as this

_HOUR = 3600  # an availability slot (s)
_HOUR_SLACK_S = 1e-3  # an hour's up and down seconds are sums of floats: a hair over 3,600 is rounding


def bucket_of(latency_s: float) -> int:
    """The histogram bucket of a transmission time in seconds (0 below 1 ms, capped at the last)."""
    if not latency_s >= BUCKET_FLOOR_S:  # also catches NaN
        return 0
    i = 1 + int(math.log2(latency_s / BUCKET_FLOOR_S) * BUCKETS_PER_DOUBLING)
    return min(i, BUCKETS - 1)


def bucket_upper(index: int) -> float:
    """The upper edge (seconds) of a bucket: bucket ``i`` holds ``[upper(i-1), upper(i))``."""
    return BUCKET_FLOOR_S * 2 ** (index / BUCKETS_PER_DOUBLING)


@dataclass
class Hist:
    """One slot's transmission times: exact count, sum and max, and the bucket counts."""

    count: int = 0
    total: float = 0.0
    top: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, latency_s: float, n: int = 1) -> None:
        self.count += n
        self.total += latency_s * n
        self.top = max(self.top, latency_s)
        b = bucket_of(latency_s)
        self.buckets[b] = self.buckets.get(b, 0) + n

    def merge(self, other: Hist) -> None:
        self.count += other.count
        self.total += other.total
        self.top = max(self.top, other.top)
        for b, c in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + c

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile, read as its bucket's upper edge but never above the exact maximum.

        The last bucket has no upper edge (it holds every wait over about 35
        days): a quantile in it reads as the maximum, so it never reads low.
        """
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return self.top if b == BUCKETS - 1 else min(bucket_upper(b), self.top)
        return self.top

    def dump(self) -> list[Any]:
        return [self.count, round(self.total, 6), self.top, sorted(self.buckets.items())]

    @classmethod
    def load(cls, doc: Any) -> Hist:
        """A saved slot; :class:`_DamagedError` for times no slot can hold (NaN, negative, a mean above the max)."""
        count, total, top, pairs = doc
        h = cls(int(count), float(total), float(top), {int(b): int(c) for b, c in pairs})
        if h.count < 0 or any(not 0 <= b < BUCKETS or c < 0 for b, c in h.buckets.items()):
            raise ValueError("histogram out of range")
        if not 0.0 <= h.top <= MAX_LATENCY_S or not 0.0 <= h.total <= h.count * h.top * (1 + 1e-6) + 1e-6:
            raise _DamagedError(f"transmission times sum {h.total!r}, max {h.top!r}")
        return h


class _DamagedError(ValueError):
    """A saved value out of range in a readable file: that slot (or figure) is dropped, the rest kept."""


class Ring:
    """Slots of ``width`` seconds, at most ``keep`` of them, keyed by ``floor(wall / width)``."""

    def __init__(self, width: int, keep: int) -> None:
        self.width = width
        self.keep = keep
        self.slots: dict[int, Any] = {}

    def index(self, now: float) -> int:
        return int(now // self.width)

    def prune(self, now: float) -> None:
        cur = self.index(now)
        stale = [i for i in self.slots if i <= cur - self.keep or i > cur + 1]
        for i in stale:
            del self.slots[i]

    def window(self, now: float, slots: int | None = None) -> tuple[float, list[Any]]:
        """(start of the window's first slot, the slots inside it), for the last ``slots`` slots."""
        cur = self.index(now)
        n = self.keep if slots is None else slots
        first = cur - n + 1
        return first * self.width, [v for i, v in self.slots.items() if first <= i <= cur + 1]


@dataclass
class Hour:
    """One hour of the link: seconds connected and not, outages that ended in it and the longest (s)."""

    up_s: float = 0.0
    down_s: float = 0.0
    outages: int = 0
    longest_s: float = 0.0


def dump_ring(items: Iterable[tuple[int, Any]]) -> list[Any]:
    """A ring's histogram slots as JSON-ready ``[index, slot]`` pairs, for the state file."""
    return [[i, h.dump()] for i, h in items]


def load_ring(doc: Any, what: str, damaged: list[str]) -> dict[int, Any]:
    """Saved histogram slots; a damaged one is noted in ``damaged`` (as ``what``) and left out, the rest kept."""
    slots: dict[int, Any] = {}
    for i, h in doc:
        try:
            slots[int(i)] = Hist.load(h)
        except _DamagedError as exc:
            damaged.append(f"{what} slot {i!r:.20}: {exc}")
    return slots


def load_hours(doc: Any, damaged: list[str]) -> dict[int, Hour]:
    """Saved availability hours; one no hour can hold is noted in ``damaged`` and left out, the rest kept."""
    slots: dict[int, Hour] = {}
    for i, up_s, down_s, outages, longest in doc:
        hour = Hour(float(up_s), float(down_s), int(outages), float(longest))
        if (
            hour.up_s >= 0.0
            and hour.down_s >= 0.0
            and hour.up_s + hour.down_s <= _HOUR + _HOUR_SLACK_S
            and hour.outages >= 0
            and 0.0 <= hour.longest_s < math.inf
        ):
            slots[int(i)] = hour
        else:
            damaged.append(f"hours slot {i!r:.20}: {up_s!r:.20} s up, {down_s!r:.20} s down, longest {longest!r:.20}")
    return slots
