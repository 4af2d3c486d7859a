"""Test mode: the window in which presses go out as ``test: true``, judged by when each press was made.

Apart from the status document (agent/health.py) because it is a rule of its
own on the button's path: the recorder asks it for every alarm, the control
socket and the centre's command set it, and a restart resumes it
(agent/carryover.py).
"""

from __future__ import annotations

import logging
import threading

from agent.events import Clock, iso_ms

log = logging.getLogger("agent.health")  # the line "test mode ended" reads as it always did

_WINDOWS_KEPT = 4  # test-mode windows remembered for presses recorded late


class TestMode:
    """Presses are sent with ``test: true`` until the deadline (monotonic time).

    A press is judged by when it was made (:meth:`active_at` its stamp), not
    when it is recorded: that is at least ``debounce_ms`` later, and later
    still behind a slow commit, and test mode may start or end meanwhile. A
    real alarm must never go out as a test, nor a technician's press as real.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until_mono: float | None = None  # the only end kept: a wall-clock end is worked out when asked
        self._windows: list[list[float]] = []  # the last few [start, end) in monotonic time
        self._lock = threading.Lock()

    def set(self, minutes: float) -> str | None:
        """Start test mode for ``minutes`` (0 ends it); return the end as ISO time."""
        now = self._clock.mono()
        with self._lock:
            window = self._windows[-1] if self._windows and self._windows[-1][1] > now else None
            if minutes <= 0:
                self._until_mono = None
                if window is not None:
                    window[1] = now
                return None
            self._until_mono = now + minutes * 60
            if window is not None:
                window[1] = self._until_mono  # extended (or shortened) from now on
            else:
                self._windows = [*self._windows[-(_WINDOWS_KEPT - 1) :], [now, self._until_mono]]
        return iso_ms(self._clock.wall() + minutes * 60)

    def active_at(self, mono: float) -> bool:
        """Whether test mode was on at ``mono`` (a press's stamp)."""
        with self._lock:
            return any(start <= mono < end for start, end in self._windows)

    def active(self) -> bool:
        with self._lock:
            if self._until_mono is None:
                return False
            if self._clock.mono() >= self._until_mono:
                self._until_mono = None
                log.info("test mode ended")
                return False
            return True

    def until(self) -> str | None:
        """The end as ISO time on the wall clock now, or None when test mode is off.

        Worked out from the monotonic end each time: a wall clock stepped since
        test mode was set (NTP after an offline boot) moves the end with it.
        """
        if not self.active():
            return None
        with self._lock:
            until_mono = self._until_mono
        return None if until_mono is None else iso_ms(self._clock.wall() + (until_mono - self._clock.mono()))

    def ends(self) -> tuple[float | None, float | None]:
        """The end as (wall-clock, monotonic) seconds while test mode is on (what the state file keeps).

        The wall-clock end only while the clock is synchronised: only such an
        end can be resumed after a reboot (agent/carryover.py).
        """
        with self._lock:
            until_mono = self._until_mono
        mono = self._clock.mono()
        if until_mono is None or mono >= until_mono:
            return None, None
        wall = self._clock.wall() + (until_mono - mono) if self._clock.synced() else None
        return wall, until_mono
