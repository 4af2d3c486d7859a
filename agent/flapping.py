"""Swinger shutdown: a tamper loop that keeps opening stops raising alarms until it has been quiet.

A loose wire on a normally-closed loop breaks contact again and again; every
opening used to be a real alarm (synced, never evicted, a photo, a chirp, and
ahead of any later panic press in the real-alarm lane), so one bad wire made
hundreds a minute.  Intrusion panels call the cure swinger shutdown: after
``flap_limit`` alarms within ``flap_window_s`` the next opening becomes one
``input_fault`` (reason ``flapping``) and the input is silent until it has
stayed at rest for ``flap_window_s``; then ``input_restored`` and alarms as
normal.  Tamper inputs only: a panic button is a person pressing, never limited.

Pure logic on monotonic times (the edges' own stamps), so tests drive it with a
fake clock; :class:`agent.watched_input.WatchedInput` owns one per tamper input.
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class Verdict(Enum):
    """What one activation of a guarded input makes."""

    ALARM = "alarm"
    FAULT = "fault"  # this activation starts the shutdown: one input_fault instead of the alarm
    SILENT = "silent"  # shut down: no event


class FlapGuard:
    """Counts one input's alarms and shuts it down while it flaps.

    Args:
        limit: alarms allowed within ``window_s``; the next activation is the fault (at least 1).
        window_s: the sliding window, and the rest the input must keep before it alarms again (seconds).

    Memory is bounded: only the latest ``limit`` alarm times are kept.
    """

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError(f"flap limit {limit} and window {window_s} s must be positive; 0 disables the guard")
        self.limit = limit
        self.window_s = window_s
        self._alarms: deque[float] = deque(maxlen=limit)
        self.since: float | None = None  # when the shutdown began; None while the input alarms normally
        self._rest_since: float | None = None  # the release that began the current quiet, while shut down

    def __repr__(self) -> str:
        state = "normal" if self.since is None else f"shut since {self.since:g}"
        return f"<FlapGuard {self.limit} in {self.window_s:g} s: {state}>"

    @property
    def shut(self) -> bool:
        return self.since is not None

    def span_s(self, at: float) -> float:
        """Seconds from the oldest alarm counted to ``at``: how fast it flapped, for the log."""
        return at - self._alarms[0] if self._alarms else 0.0

    def activation(self, at: float) -> Verdict:
        """The input became active at monotonic ``at`` (the edge's stamp)."""
        if self.since is not None:
            self._rest_since = None
            return Verdict.SILENT
        if len(self._alarms) == self.limit and at - self._alarms[0] < self.window_s:
            self.since = at
            self._rest_since = None
            return Verdict.FAULT
        self._alarms.append(at)
        return Verdict.ALARM

    def released(self, at: float) -> None:
        """The input returned to rest at monotonic ``at``: the quiet that ends a shutdown starts here."""
        if self.since is not None:
            self._rest_since = at

    def restore_due(self) -> float | None:
        """Monotonic time the shutdown ends if the input stays at rest; None while active or not shut down."""
        return None if self._rest_since is None else self._rest_since + self.window_s

    def restore(self) -> float:
        """End the shutdown; return how long the input flapped (from the fault to the release before the quiet)."""
        since, rest = self.since, self._rest_since
        self.since = self._rest_since = None
        self._alarms.clear()
        return 0.0 if since is None or rest is None else max(0.0, rest - since)
