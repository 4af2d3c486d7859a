"""What the LED and buzzer know of recent alarms: recorded, delivered, acknowledged, and news that came early.

Kept apart from :mod:`agent.indicators` (which owns the lock, the thread and
the pins) so the acknowledgement rules read in one place: which ack counts
(the first one, of the newest alarm), news of an alarm not recorded yet (the
recorder announces it a few milliseconds after its PUBLISH), and the bounds
that keep both memories small.  No lock, no clock: the caller holds its own
lock and passes the monotonic time in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.patterns import Pattern

_RECENT_ALARMS = 256
_EARLY_NEWS = 64  # deliveries and acks of alarms not recorded yet: a few milliseconds' worth, or ids not ours


@dataclass
class _Alarm:
    silent: bool
    delivered_at: float | None = None
    acked_at: float | None = None


@dataclass(frozen=True)
class Restart:
    """A pattern to run again from its beginning (a new chirp), on the LED, the buzzer, or both."""

    pattern: Pattern
    led: bool
    buzzer: bool


class RecentAlarms:
    """The recent alarms, oldest first, and what happened to each; not thread-safe.

    Args:
        ack_hold_s: how long ``acknowledged`` runs after the first ack, seconds.
        sent_hold_s: how long ``sent`` runs after a delivery when no ack comes, seconds.

    """

    def __init__(self, *, ack_hold_s: float, sent_hold_s: float) -> None:
        self._ack_hold_s = ack_hold_s
        self._sent_hold_s = sent_hold_s
        self._alarms: dict[str, _Alarm] = {}  # recent alarms, oldest first
        self._early: dict[str, _Alarm] = {}  # delivered or acked before alarm_recorded came (it runs a little later)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._alarms

    def __len__(self) -> int:
        return len(self._alarms)

    def recorded(self, event_id: str, *, silent: bool) -> Restart | None:
        """A new alarm, starting from what early news says; None if it is known already."""
        if event_id in self._alarms:
            return None
        early = self._early.pop(event_id, None)
        alarm = _Alarm(silent=silent)
        if early is not None:
            alarm.delivered_at, alarm.acked_at = early.delivered_at, early.acked_at
        self._add(event_id, alarm)
        if alarm.acked_at is not None:
            return Restart(Pattern.ACKNOWLEDGED, led=True, buzzer=not silent)
        return Restart(Pattern.SENDING if alarm.delivered_at is None else Pattern.SENT, led=True, buzzer=not silent)

    def carried(self, event_id: str, *, silent: bool, now: float) -> None:
        """An alarm of the last run, delivered with its ``sent`` hold already over at ``now``."""
        if event_id not in self._alarms:
            self._add(event_id, _Alarm(silent=silent, delivered_at=now - self._sent_hold_s))

    def _add(self, event_id: str, alarm: _Alarm) -> None:
        """Keep ``alarm`` as the newest, forgetting the oldest delivered one beyond the bound."""
        self._alarms[event_id] = alarm
        while len(self._alarms) > _RECENT_ALARMS:  # the oldest delivered one goes first
            old = next((k for k, a in self._alarms.items() if a.delivered_at is not None), None)
            del self._alarms[old if old is not None else next(iter(self._alarms))]

    def delivered(self, event_id: str, now: float) -> bool:
        """The PUBACK came at ``now``; True if a recorded alarm's pattern may change (repeats change nothing)."""
        alarm = self._alarms.get(event_id)
        if alarm is None:
            self._note_early(event_id).delivered_at = now
        elif alarm.delivered_at is None:
            alarm.delivered_at = now
            return True
        return False

    def _note_early(self, event_id: str) -> _Alarm:
        """News of an alarm not recorded yet (or not ours: the memory is small and bounded)."""
        early = self._early.setdefault(event_id, _Alarm(silent=False))
        while len(self._early) > _EARLY_NEWS:
            del self._early[next(iter(self._early))]
        return early

    def acknowledged(self, event_id: str, now: float) -> tuple[bool, Restart | None]:
        """The centre's ack came at ``now``: whether the alarm is a recent one of ours, and what restarts.

        Only the first ack of an alarm restarts ``acknowledged``, and only on
        an output for which it is the newest alarm (the buzzer counts audible
        alarms only).
        """
        alarm = self._alarms.get(event_id)
        if alarm is None:
            early = self._note_early(event_id)  # shown once recorded, if it is ours
            if early.acked_at is None:
                early.acked_at = now
                if early.delivered_at is None:
                    early.delivered_at = early.acked_at
            return False, None
        if alarm.acked_at is not None:
            return True, None
        alarm.acked_at = now
        if alarm.delivered_at is None:
            alarm.delivered_at = alarm.acked_at
        newest_audible = next((k for k, a in reversed(self._alarms.items()) if not a.silent), None)
        return True, Restart(
            Pattern.ACKNOWLEDGED, led=next(reversed(self._alarms)) == event_id, buzzer=newest_audible == event_id
        )

    def pattern(self, now: float, *, audible_only: bool) -> Pattern | None:
        """``acknowledged``, ``sending`` or ``sent`` as the alarms make it at ``now``; None when they show nothing."""
        sending = sent = newer_acked = False
        newest = True
        for a in reversed(self._alarms.values()):  # newest first: only the newest alarm's ack is shown
            if audible_only and a.silent:
                continue
            if newest and a.acked_at is not None and now - a.acked_at < self._ack_hold_s:
                return Pattern.ACKNOWLEDGED
            newest = False
            if a.delivered_at is None:
                sending = True
            elif a.acked_at is None and not newer_acked and now - a.delivered_at < self._sent_hold_s:
                sent = True
            newer_acked = newer_acked or a.acked_at is not None
        if sending:
            return Pattern.SENDING
        if sent:
            return Pattern.SENT
        return None

    def next_change(self, now: float) -> float:
        """The next time after ``now`` an ack or sent hold ends; ``math.inf`` if none is running."""
        times = []
        for a in self._alarms.values():
            if a.acked_at is not None:
                times.append(a.acked_at + self._ack_hold_s)
            elif a.delivered_at is not None:
                times.append(a.delivered_at + self._sent_hold_s)
        return min((t for t in times if t > now), default=math.inf)
