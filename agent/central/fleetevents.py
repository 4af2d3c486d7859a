"""The fleet view's events: each one shown once, checked first, its gaps in ``seq`` told.

Mixed into :class:`~agent.central.fleet.FleetView` (one object, one thread),
whose ``feed`` sends each event here.  **De-dup** on (device, event ``id``)
over the last :data:`PER_DEVICE_IDS` ids of each device, as the contract asks
of every consumer (:class:`RecentIds`); suppressed copies are counted.  An
event's id must be 32 hex digits and the fields the contract restricts must
match its topic (:func:`~agent.central.fleetmsg.restricted`), or it becomes
one warning naming its topic.  A ``seq`` past the next one
expected is a gap (a warning before the event's line), one below the highest
seen is late; a retained event is never an alarm.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from agent.central.display import Line, decode, escape, int_or_none
from agent.central.fleetmsg import Device, Msg, event_line, gap_text, restricted
from agent.events import is_event_id

PER_DEVICE_IDS = 512

_DeviceKey = tuple[str, str]


class RecentIds:
    """The event ids each device sent recently: one device's backlog cannot push out another's.

    Each device keeps its last ``per_device`` ids (an LRU); over ``total`` ids
    in all, the oldest id of a device holding the most goes first, so a
    quiet device's acknowledged panic outlives a neighbour draining a day of
    faults, and memory stays bounded however large the fleet.  A device's
    ids match only its own: an id sent by another device is new here.
    Costs O(1) per event (devices are kept in buckets by how many ids they hold).
    """

    def __init__(self, total: int, per_device: int = PER_DEVICE_IDS) -> None:
        self.total, self.per_device = max(1, total), max(1, per_device)
        self.count = 0
        self._ids: dict[_DeviceKey, dict[str, None]] = {}  # in order of use; a dict: half an OrderedDict's bytes
        self._by_size: list[dict[_DeviceKey, None]] = [{} for _ in range(self.per_device + 1)]
        self._largest = 0

    def __repr__(self) -> str:
        return f"<RecentIds {self.count} ids of {len(self._ids)} devices, at most {self.total}>"

    def seen(self, key: _DeviceKey, eid: str) -> bool:
        """True when ``key`` sent ``eid`` recently (a copy); otherwise remember it and return False."""
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = {}
        elif eid in ids:
            ids[eid] = ids.pop(eid)  # the most recently used
            return True
        ids[eid] = None
        if len(ids) > self.per_device:
            del ids[next(iter(ids))]
        else:
            self.count += 1
            self._resized(key, len(ids) - 1, len(ids))
        if self.count > self.total:
            self._evict()
        return False

    def _resized(self, key: _DeviceKey, old: int, new: int) -> None:
        if old:
            del self._by_size[old][key]
        if new:
            self._by_size[new][key] = None
            self._largest = max(self._largest, new)
        else:
            del self._ids[key]

    def _evict(self) -> None:
        while not self._by_size[self._largest]:
            self._largest -= 1
        key = next(iter(self._by_size[self._largest]))
        ids = self._ids[key]
        del ids[next(iter(ids))]
        self.count -= 1
        self._resized(key, len(ids) + 1, len(ids))


class FleetEvents:
    """Event messages, as the fleet view takes them; its de-dup state is set up by the view."""

    if TYPE_CHECKING:  # the fleet view's own state and steps, which these methods share
        _dedup_ids: int
        events: int
        duplicates: int

        def _device(self, site: str, device: str) -> Device: ...
        def _warn(self, at: float, text: str) -> Line: ...
        def _clock(self, at: float) -> str: ...

    @cached_property
    def _recent(self) -> RecentIds:
        """Ids seen per device; made at the first event, bounded by the view's ``dedup_ids`` in all."""
        return RecentIds(self._dedup_ids)

    def _retained_event(self, msg: Msg) -> list[Line]:
        """A stale copy the broker replays at every subscribe (someone published it retained): never an alarm."""
        return [
            self._warn(msg.at, f"{escape(msg.topic)}: a retained event (the contract never retains events); not shown")
        ]

    def _event(self, msg: Msg, mono: float, *, alarm_mono: float | None = None) -> list[Line]:
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
        if self._recent.seen((site, device), eid):
            self.duplicates += 1
            return []
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
