"""Transmission times and path availability as the status reports them, kept across restarts.

The figures themselves (histograms, availability slots) are :mod:`agent.linkstats`;
this module feeds them from the agent's callbacks and keeps them in
``link-stats.json`` beside the outbox.  The file is written at most once per
``save_every_s`` (the heartbeat interval) and at stop: a few tens of kB every
30 s is already a lot of SD-card writes, and losing one interval of figures to
a SIGKILL is the documented price.

A transmission time is the wall clock's now less the event's recording time
(the outbox row's, on the wall clock too), so a clock step between the two
would count as transmission: a Pi booted offline on a clock two days behind,
pressed, then set right by NTP, reported a 2 s delivery as two days for a
month.  The offset between the wall and the monotonic clock is sampled at
every call; a change of more than :data:`STEP_S` is a step.  Between two
steps the wall clock ran at one offset, so an event's recording time names
the monotonic time it was made, if only one of those clocks could have
shown it then (a step happened somewhere between the samples around it);
the time counted is the monotonic time since.  An event that more than one
clock could have recorded is not counted at all.  Two steps with no sample
between them read as one, and an event recorded between them is then
miscounted by the first step (tests/test_transmission.py, the property
test, samples between steps).  Only events recorded by this process are corrected: a step
before it started cannot be seen, and an event of an earlier run (pressed,
then a power cut) counts with its whole wall-clock wait.

That wait needs a right clock now: a Pi back from a power cut on fake-hwclock
may deliver the press before NTP answers, on a clock hours behind, which would
count the clock's error (or 0) instead of the wait.  So such a delivery is
held while the clock is not synchronised or reads behind the last run's save,
and counted once it is right, its delivery placed by the monotonic clock (at
most :data:`DEFERRED_KEPT`; held ones are lost, not counted, if the agent stops
first).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.closing import Closing
from agent.linkstats import LinkStats
from agent.statefile import write_atomic

log = logging.getLogger(__name__)

STEP_S = 1.0  # a change of the wall-monotonic offset larger than this is a clock step, not a slew
_STEPS_KEPT = 16
_EPS = 1e-3  # s: a wall-clock time near 2e9 s carries a float error of a few 1e-7 s
DEFERRED_KEPT = 10_000  # earlier-run deliveries held until the clock is right; more are not counted


@dataclass(frozen=True)
class _Step:
    """A clock step seen between two samples (monotonic ``m_prev`` and ``m_now``)."""

    m_prev: float
    m_now: float
    off_old: float
    off_new: float


class Transmission(Closing):
    """Feeds :class:`LinkStats` from link changes and PUBACKs; saves and restores it.

    Args:
        path: the JSON file (``link-stats.json`` beside the outbox).
        wall: the wall clock (s); the figures are per calendar hour and day.
        mono: the monotonic clock (s) that paces the saves.
        save_every_s: least time between two saves.
        synced: whether the wall clock is NTP-synchronised (``Clock.synced``); ``None``: not known, and
            then only a clock behind the last save holds an earlier run's deliveries back.

    """

    def __init__(
        self,
        path: Path,
        *,
        wall: Callable[[], float],
        mono: Callable[[], float],
        save_every_s: float,
        synced: Callable[[], bool] | None = None,
    ) -> None:
        self.path = path
        self._wall = wall
        self._mono = mono
        self._synced = synced
        self._every = save_every_s
        self._saved_at: float | None = None
        self._warned = False
        self._closed = False
        self._broker: str | None = None
        self._steps: deque[_Step] = deque(maxlen=_STEPS_KEPT)
        self._sampling = threading.Lock()
        self._mark = (mono(), wall() - mono())  # (monotonic, wall - monotonic) at the last sample
        self._deferred: list[tuple[str, float]] = []  # (broker, monotonic delivery time - recorded wall time)
        self._deferring = threading.Lock()
        self._deferred_full = False
        self.stats = LinkStats.from_state(self._read(), wall(), source=str(path))

    def _read(self) -> Any:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); transmission figures start afresh", self.path, exc)
            return None

    def link(self, connected: bool, broker: str | None) -> None:
        """The uplink's state changed (any thread)."""
        now = self._sample()
        if connected and broker is not None:
            self._broker = broker
            self.stats.link_up(broker, now)
        else:
            self._broker = None
            self.stats.link_down(now)

    def delivered(self, recorded_wall: float, *, this_run: bool = True) -> None:
        """An event recorded at ``recorded_wall`` was acknowledged by the broker now connected (sender thread).

        ``this_run``: recorded by this process.  Only then do the steps seen
        since it started apply; an event of an earlier run (before a power
        cut) was recorded on a clock these steps say nothing about, and counts
        with its full wall-clock wait.
        """
        broker = self._broker
        if broker is None:
            return
        now = self._sample()
        if not this_run and not self._clock_right(now):
            self._defer(broker, self._mark[0] - recorded_wall)
            return
        self._settle(now)
        if not this_run or not self._steps:
            self.stats.delivered(broker, now - recorded_wall, now)
            return
        recorded = self._recorded_mono(recorded_wall)
        if recorded is not None:  # else recorded while the clock stepped: its time cannot be told
            self.stats.delivered(broker, self._mark[0] - recorded, now)

    def _clock_right(self, now: float) -> bool:
        """Whether an earlier run's recording time can be compared with ``now``: synchronised, past the last save."""
        saved = self.stats.restored_save
        return (saved is None or now >= saved) and (self._synced is None or self._synced())

    def _defer(self, broker: str, gap: float) -> None:
        """Hold an earlier run's delivery (``gap``: monotonic delivery time less wall recording time)."""
        with self._deferring:
            if len(self._deferred) < DEFERRED_KEPT:
                self._deferred.append((broker, gap))
                return
            full, self._deferred_full = self._deferred_full, True
        if not full:
            log.warning(
                "%d deliveries of events from before the restart wait for a synchronised clock; "
                "more are not counted in the transmission times (check NTP)",
                DEFERRED_KEPT,
            )

    def _settle(self, now: float) -> None:
        """Count the held deliveries once the clock is right: each at its monotonic time on today's clock."""
        if not self._deferred or not self._clock_right(now):
            return
        with self._deferring:
            held, self._deferred = self._deferred, []
        offset = self._mark[1]
        for broker, gap in held:
            self.stats.delivered(broker, offset + gap, now)

    def _recorded_mono(self, recorded_wall: float) -> float | None:
        """The monotonic time a wall-clock recording time stands for, if only one clock between steps fits it.

        Between two steps the wall clock ran at one offset from the monotonic
        one; a recording could have been made on each such clock only within
        the monotonic span it may have lasted (a step happened somewhere
        between the samples around it).
        """
        steps = list(self._steps)
        eras = [(steps[0].off_old, -math.inf, steps[0].m_now)]
        for k, step in enumerate(steps):
            end = steps[k + 1].m_now if k + 1 < len(steps) else self._mark[0]
            eras.append((step.off_new, step.m_prev, end))
        fits = sorted(recorded_wall - off for off, lo, hi in eras if lo - _EPS <= recorded_wall - off <= hi + _EPS)
        if not fits or fits[-1] - fits[0] > _EPS:
            return None
        return fits[0]

    def _sample(self) -> float:
        """The wall clock now, noting a step of it since the last sample (any thread)."""
        with self._sampling:  # two threads across one step would note it twice
            mono, wall = self._mono(), self._wall()
            m_prev, off_old = self._mark
            off_new = wall - mono
            if abs(off_new - off_old) > STEP_S:
                self._steps.append(_Step(m_prev, mono, off_old, off_new))
            self._mark = (mono, off_new)
            return wall

    def snapshot(self) -> dict[str, Any]:
        """The status document's ``link.stats``."""
        now = self._sample()
        self._settle(now)
        return self.stats.snapshot(now)

    def save(self, *, force: bool = False) -> None:
        """Write the figures if ``save_every_s`` has passed since the last write (or ``force``)."""
        now = self._mono()
        if not force and self._saved_at is not None and now - self._saved_at < self._every:
            return
        self._saved_at = now
        data = json.dumps(self.stats.to_state(self._wall()), separators=(",", ":")).encode()
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write %s (%s); transmission figures will restart after a restart", self.path, exc)
                self._warned = True

    def close(self) -> None:
        """Save once more; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.save(force=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_id(self) -> str:
        return str(self.path)
