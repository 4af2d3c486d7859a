"""Which event ids the centre may acknowledge as this device's, across a restart.

Mixed into :class:`agent.recorder.Recorder` (its ``_lock`` and recent list).
Kept apart from the recording path because it answers other threads at
other times: paho's thread asks :meth:`KnownAlarms.knows` when a centre's
ack arrives, the start hands in the alarms of the earlier run
(agent/carryover.py), and the state file saves :meth:`KnownAlarms.latest_alarms`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from agent.events import EventType

if TYPE_CHECKING:
    from agent.recent import RecentEvents

_REMEMBERED = 128  # alarm ids of earlier runs the centre may still acknowledge
_ALARM_TYPES = frozenset(t.value for t in EventType if t.is_alarm)


class KnownAlarms:
    """The known-ids part of :class:`~agent.recorder.Recorder`: this run's recent events and earlier alarms."""

    if TYPE_CHECKING:  # the recorder's own state, which these methods share
        _lock: threading.Lock
        _recent: RecentEvents
        _remembered: dict[str, None]

    def knows(self, event_id: str) -> bool:
        """Whether the centre may acknowledge ``event_id``: a recent event, or an alarm from before a restart."""
        return event_id in self._remembered or self._recent.knows(event_id)

    def remember(self, event_ids: Iterable[str]) -> None:
        """Alarms of an earlier run (still pending, or among the latest): the centre's ack of one is ours."""
        with self._lock:
            for event_id in event_ids:
                self._remembered[event_id] = None
            while len(self._remembered) > _REMEMBERED:
                del self._remembered[next(iter(self._remembered))]

    def latest_alarms(self, n: int = 16) -> list[str]:
        """Ids of the latest ``n`` alarms, newest first, remembered ones after this run's (for the state file)."""
        with self._lock:
            remembered = list(reversed(self._remembered))
        ids = [e["id"] for e in self._recent.as_dicts() if e["type"] in _ALARM_TYPES]
        return list(dict.fromkeys(ids + remembered))[:n]
