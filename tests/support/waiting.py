"""Waiting on a condition: the one way a test waits for something to happen.

A fixed ``time.sleep`` is either too short on a loaded 2-core machine (a
flaky test) or too long everywhere else (a slow suite); polling a predicate
with a generous deadline is neither.  Timeouts here are ceilings, never
expectations: a test that passes only when something is fast belongs in bench/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_INTERVAL_S = 0.02


def eventually(
    pred: Callable[[], T | None],
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str | Callable[[], str] = "condition",
    *,
    interval: float = DEFAULT_INTERVAL_S,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Return ``pred()``'s first truthy value; fail naming ``what`` after ``timeout`` seconds.

    ``what`` may be a callable so the failure message can show the state at the
    moment of failure (what did arrive, what the log said).  Exceptions listed
    in ``retry_on`` (an agent restarting, a socket not there yet) count as
    "not yet"; the last one is chained to the failure.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            got = pred()
        except retry_on as exc:
            got, last = None, exc
        if got:
            return got
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {said}") from last
        time.sleep(interval)


def never(
    pred: Callable[[], object],
    within: float,
    what: str | Callable[[], str] = "condition",
    *,
    interval: float = DEFAULT_INTERVAL_S,
) -> None:
    """Fail if ``pred()`` turns truthy at any poll during ``within`` seconds.

    For the few checks that something does *not* happen (a refused command is
    not obeyed, a retained message is not replayed); ``within`` is how long the
    test is willing to watch, and the check can only fail, never flake, by being slow.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            said = what() if callable(what) else what
            raise AssertionError(f"{said} happened within {within:g} s")
        time.sleep(interval)
