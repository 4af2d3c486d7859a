"""The fleet view's events: each one shown once, checked first, its gaps in ``seq`` told.

Mixed into :class:`~agent.central.fleet.FleetView` (one object, one thread),
whose ``feed`` sends each event here.  **De-dup** on event ``id`` over the
last ``dedup_ids`` ids (an LRU), as the contract asks of every consumer;
suppressed copies are counted.  An event's id must be 32 hex digits and the
fields the contract restricts must match its topic (:func:`~agent.central.fleetmsg.restricted`),
or it becomes one warning naming its topic.  A ``seq`` past the next one
expected is a gap (a warning before the event's line), one below the highest
seen is late; a retained event is never an alarm.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from agent.central.display import Line, decode, escape, int_or_none
from agent.central.fleetmsg import Device, Msg, event_line, gap_text, restricted
from agent.events import is_event_id


class FleetEvents:
    """Event messages, as the fleet view takes them; its de-dup state is set up by the view."""

    if TYPE_CHECKING:  # the fleet view's own state and steps, which these methods share
        _seen: OrderedDict[str, None]
        _dedup_ids: int
        events: int
        duplicates: int

        def _device(self, site: str, device: str) -> Device: ...
        def _warn(self, at: float, text: str) -> Line: ...
        def _clock(self, at: float) -> str: ...

    def _retained_event(self, msg: Msg) -> list[Line]:
        """A stale copy the broker replays at every subscribe (someone published it retained): never an alarm."""
        return [
            self._warn(msg.at, f"{escape(msg.topic)}: a retained event (the contract never retains events); not shown")
        ]

    def _event(self, msg: Msg, mono: float, *, alarm_mono: float | None = None) -> list[Line]:  # noqa: C901 (checks in order, inline: no call per event)
        doc, at, site, device = decode(msg.payload), msg.at, msg.site, msg.device
        where = escape(msg.topic)
        if isinstance(doc, str):
            return [self._warn(at, f"{where}: {doc}; ignored")]
        eid = doc.get("id")
        if not isinstance(eid, str) or not eid:
            return [self._warn(at, f"{where}: event without an id; ignored")]
        if not is_event_id(eid):
            return [self._warn(at, f"{where}: event id '{escape(eid[:40])}' is not 32 hex digits; ignored")]
        problem = restricted(doc, msg)
        if problem is not None:
            return [self._warn(at, f"{where}: {problem}; ignored")]
        if eid in self._seen:
            self._seen.move_to_end(eid)
            self.duplicates += 1
            return []
        self._seen[eid] = None
        if len(self._seen) > self._dedup_ids:
            self._seen.popitem(last=False)
        self.events += 1
        dev = self._device(site, device)
        seq = int_or_none(doc.get("seq"))
        lines: list[Line] = []
        late = None
        if seq is not None and dev.max_seq is not None:
            if seq > dev.max_seq + 1:
                lines.append(self._warn(at, gap_text(dev, seq, doc if msg.rest[1] == "agent_started" else None)))
            elif seq < dev.max_seq:
                late = dev.max_seq
        if seq is not None:
            dev.max_seq = max(seq, dev.max_seq or 0)
        dev.last_event, dev.last_event_at = msg.rest[1], mono
        lines.append(event_line(msg, doc, eid, seq=seq, late=late, clock=self._clock(at), mono=alarm_mono))
        return lines
