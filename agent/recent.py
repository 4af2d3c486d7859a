"""The recently recorded events that ``campus-agent status`` lists, newest first.

Frozen :class:`RecentEvent` values in a tuple that is replaced, never changed
in place, so readers on other threads (the control socket, paho's thread for
a centre's ack) iterate a snapshot that cannot change under them.  Writers
(the recorder) serialise their updates under their own lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

RECENT = 50


@dataclass(frozen=True)
class RecentEvent:
    """One recently recorded event as ``campus-agent status`` shows it."""

    id: str
    seq: int
    type: str
    source: str
    ts: str
    test: bool
    delivered: bool = False
    on_disk: bool = True

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RecentEvents:
    """The last :data:`RECENT` events, newest first."""

    def __init__(self) -> None:
        self._items: tuple[RecentEvent, ...] = ()

    def add(self, fresh: Iterable[RecentEvent]) -> None:
        """Events just recorded, oldest first (they are shown newest first)."""
        self._items = (*reversed(tuple(fresh)), *self._items)[:RECENT]

    def mark(self, event_id: str, *, delivered: bool = False, on_disk: bool = False) -> None:
        """Turn on ``delivered`` or ``on_disk`` of the event ``event_id``, if it is still listed."""
        if any(r.id == event_id for r in self._items):
            self._items = tuple(
                dataclasses.replace(r, delivered=r.delivered or delivered, on_disk=r.on_disk or on_disk)
                if r.id == event_id
                else r
                for r in self._items
            )

    def knows(self, event_id: str) -> bool:
        return any(r.id == event_id for r in self._items)

    def as_dicts(self) -> list[dict[str, Any]]:
        """A snapshot as plain dicts, newest first."""
        return [r.as_dict() for r in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<RecentEvents {len(self._items)} of {RECENT}>"
