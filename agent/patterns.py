"""The LED and buzzer patterns as pure functions of time: what is on, and when that next changes.

Kept apart from :mod:`agent.indicators` (which owns the thread and the pins)
so the timing table can be read, and tested, without any hardware or clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate


class Pattern(StrEnum):
    IDLE = "idle"
    SENDING = "sending"
    SENT = "sent"
    ACKNOWLEDGED = "acknowledged"
    FAULT = "fault"


@dataclass(frozen=True)
class _Timeline:
    """Alternating on/off durations in milliseconds, starting with on."""

    steps_ms: tuple[float, ...]
    repeat: bool


LED = "ack_led"
BUZZER = "buzzer"
_TIMELINES: dict[tuple[str, str], _Timeline] = {
    (LED, Pattern.IDLE): _Timeline((50, 4950), repeat=True),
    (LED, Pattern.SENDING): _Timeline((125, 125), repeat=True),
    (LED, Pattern.SENT): _Timeline((500, 500), repeat=True),
    (LED, Pattern.ACKNOWLEDGED): _Timeline((math.inf,), repeat=False),
    (LED, Pattern.FAULT): _Timeline((100, 150, 100, 1650), repeat=True),
    (BUZZER, Pattern.IDLE): _Timeline((), repeat=False),
    (BUZZER, Pattern.SENDING): _Timeline((100,), repeat=False),
    (BUZZER, Pattern.SENT): _Timeline((100, 100, 100), repeat=False),
    (BUZZER, Pattern.ACKNOWLEDGED): _Timeline((1000,), repeat=False),
    (BUZZER, Pattern.FAULT): _Timeline((), repeat=False),
}


def _timeline(output: str, pattern: str) -> _Timeline:
    try:
        return _TIMELINES[(output, pattern)]
    except KeyError:
        raise ValueError(f"no pattern '{pattern}' for output '{output}'") from None


def _ms(t: float) -> float:
    """Seconds to milliseconds, snapped to the nanosecond so ``since + edge - since`` lands on the edge."""
    return round(t * 1000.0, 6)


def _level_ms(tl: _Timeline, ms: float) -> bool:
    total = sum(tl.steps_ms)
    if ms < 0 or total == 0:
        return False
    if tl.repeat:
        ms %= total
    for i, end in enumerate(accumulate(tl.steps_ms)):
        if ms < end:
            return i % 2 == 0
    return False


def level(output: str, pattern: str, t: float) -> bool:
    """Whether ``output`` (``ack_led`` or ``buzzer``) is on ``t`` seconds into ``pattern``; ValueError if unknown."""
    return _level_ms(_timeline(output, pattern), _ms(t))


def next_edge(output: str, pattern: str, t: float) -> float | None:
    """When the level next changes after ``t``, in seconds since the pattern started; None if it never does."""
    tl = _timeline(output, pattern)
    ms = _ms(t)
    bounds = [0.0, *accumulate(tl.steps_ms)]
    total = bounds[-1]
    if tl.repeat and ms >= 0:
        base = ms // total * total
        bounds = [base + b for b in bounds] + [base + total + b for b in bounds]
    current = _level_ms(tl, ms)
    for b in bounds:
        if b > ms and not math.isinf(b) and _level_ms(tl, b) != current:
            return b / 1000.0
    return None


__all__ = ["BUZZER", "LED", "Pattern", "level", "next_edge"]
