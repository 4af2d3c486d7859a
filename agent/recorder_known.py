"""Which event ids the centre may acknowledge as this device's, across a restart.

Mixed into :class:`agent.recorder.Recorder` (its ``_lock`` and recent list).
Kept apart from the recording path because it answers other threads at
other times: paho's thread asks :meth:`KnownAlarms.knows` when a centre's
ack arrives, the start hands in the alarms of the earlier run
(agent/carryover.py), and the state file saves :meth:`KnownAlarms.latest_alarms`
and :meth:`KnownAlarms.latest_alarm_seqs`.

This run's alarms are kept in a record of their own, apart from the recent
list: that one holds the last 50 events of every kind, and a flapping camera
pushes an alarm out of it long before the centre's operator acknowledges it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from agent.events import EventType

if TYPE_CHECKING:
    from agent.recent import RecentEvent, RecentEvents

_REMEMBERED = 128  # alarm ids of earlier runs the centre may still acknowledge
_LATEST = 128  # alarm ids of this run the centre may still acknowledge
_ALARM_TYPES = frozenset(t.value for t in EventType if t.is_alarm)


class KnownAlarms:
    """The known-ids part of :class:`~agent.recorder.Recorder`: this run's alarms and events, and earlier alarms."""

    if TYPE_CHECKING:  # the recorder's own state, which these methods share
        _lock: threading.Lock
        _recent: RecentEvents
        _remembered: dict[str, int | None]  # id -> seq (None: not known), oldest first
        _latest: dict[str, int]  # this run's alarms: id -> seq, oldest first

    def knows(self, event_id: str) -> bool:
        """Whether the centre may acknowledge ``event_id``: a recent event, or an alarm of this run or an earlier."""
        return event_id in self._latest or event_id in self._remembered or self._recent.knows(event_id)

    def remember(self, event_ids: Iterable[str], seqs: Mapping[str, int] | None = None) -> None:
        """Alarms of an earlier run (still pending, or among the latest), oldest first: the centre's ack of one is ours.

        ``seqs`` gives the seq of those it knows, so a pending one is found in
        the outbox again after yet another restart.
        """
        seqs = seqs or {}
        with self._lock:
            for event_id in event_ids:
                self._remembered.pop(event_id, None)  # re-added as the newest
                self._remembered[event_id] = seqs.get(event_id)
            _trim(self._remembered, _REMEMBERED)

    def _note_alarms(self, fresh: Iterable[RecentEvent]) -> None:
        """The alarms among events just recorded, oldest first; called under ``_lock``."""
        for event in fresh:
            if event.type in _ALARM_TYPES:
                self._latest[event.id] = event.seq
        _trim(self._latest, _LATEST)

    def latest_alarms(self, n: int = 16) -> list[str]:
        """Ids of the latest ``n`` alarms, newest first, remembered ones after this run's (for the state file)."""
        return [event_id for event_id, _ in self._latest_alarms(n)]

    def latest_alarm_seqs(self, n: int = 16) -> list[tuple[str, int]]:
        """(id, seq) of those of the latest ``n`` alarms whose seq is known, newest first (for the state file)."""
        return [(event_id, seq) for event_id, seq in self._latest_alarms(n) if seq is not None]

    def _latest_alarms(self, n: int) -> list[tuple[str, int | None]]:
        with self._lock:
            latest: dict[str, int | None] = dict(reversed(self._latest.items()))
            for event_id, seq in reversed(self._remembered.items()):
                latest.setdefault(event_id, seq)
        return list(latest.items())[:n]


def _trim(ids: dict[str, int | None] | dict[str, int], bound: int) -> None:
    """Forget the oldest ids beyond ``bound``."""
    while len(ids) > bound:
        del ids[next(iter(ids))]
