"""The press loop shared by every in-process wrapper: drive a mock pin on a schedule, stamping each press.

Standard library only, so the peer's wrapper can use it from the peer's own
virtual environment.  The stamp is ``time.monotonic_ns()`` (CLOCK_MONOTONIC,
shared by every process on the machine) taken just before the pin is driven;
the subscriber stamps arrivals on the same clock, so arrival minus stamp is
press → delivery.  The driving thread plays gpiozero's own callback thread:
a mock pin calls its handlers synchronously in the thread that drives it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def press_loop(
    press: Callable[[], None], release: Callable[[], None], *, count: int, gap_ms: float, hold_ms: float
) -> list[int]:
    """Press ``count`` times ``gap_ms`` apart, releasing ``hold_ms`` after each press; return the stamps (ns)."""
    stamps: list[int] = []
    gap = gap_ms / 1000.0
    start = time.monotonic() + 0.05
    for i in range(count):
        delay = start + i * gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.monotonic_ns()
        press()
        stamps.append(t)
        time.sleep(hold_ms / 1000.0)
        release()
    return stamps


def rss_mb() -> float:
    """This process's resident set size now (MB)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
