"""What the monitor's MQTT link hands to its print loop: messages, link changes, one queue.

Plain values, no paho: :mod:`agent.central.link` fills the :data:`Inbox` on
paho's thread, :mod:`agent.central.session` empties it on its own, through
a :class:`Backlog` that sorts the events out first.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Incoming:
    """One message as it arrived; ``arrival`` is wall-clock seconds.

    ``content_type`` and ``user_properties`` are the MQTT 5 properties (``None``
    and empty under MQTT 3.1.1, or when the sender set none).
    """

    topic: str
    payload: bytes
    retained: bool
    arrival: float
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LinkNote:
    """The connection dropped (``up`` false) or came back after a drop."""

    up: bool
    text: str


Burst = tuple[Incoming, ...]
"""Messages that arrived in one read, in order: one hand-off for many (see :func:`unpack`)."""
Inbox = queue.SimpleQueue[Incoming | LinkNote | Burst]


def unpack(item: Incoming | LinkNote | Burst) -> Sequence[Incoming | LinkNote]:
    """What an inbox item holds, in arrival order."""
    return item if isinstance(item, tuple) else (item,)


def level(head: str, topic: str) -> str:
    """The topic's level after ``PREFIX/SITE/DEVICE`` (``head`` is ``"PREFIX/"``): ``event``, ``status``, ...

    By level, never by a substring: a site or device named ``event`` is a
    contract id like any other.  ``""`` when the topic has no such level.
    """
    if not topic.startswith(head):
        return ""
    parts = topic[len(head) :].split("/", 3)
    return parts[2] if len(parts) > 2 else ""


class Backlog:
    """What the print loop took from the inbox: every event handed out at once, the rest kept in order.

    Each :meth:`take` moves what the inbox holds (up to ``pull`` messages)
    here, so a panic queued behind any number of statuses is found on the
    first turn that reaches it, not after the statuses ahead of it are
    handled.  The rest is moved, not copied: memory is what the inbox held.
    Each message keeps the monotonic time it was taken, the fleet's
    deadlines count from it.
    """

    def __init__(self, inbox: Inbox, prefix: str, *, pull: int = 100_000) -> None:
        self._inbox, self._head, self._pull = inbox, f"{prefix}/", pull
        self._chunks: deque[tuple[float, deque[Incoming | LinkNote]]] = deque()

    def __repr__(self) -> str:
        return f"<Backlog {len(self)} waiting>"

    def __len__(self) -> int:
        return sum(len(chunk) for _, chunk in self._chunks)

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def take(self, wait: float, mono: Callable[[], float]) -> tuple[float, list[Incoming]]:
        """Move what has arrived here (waiting up to ``wait`` s for a first message); return the events and when."""
        try:
            first = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return 0.0, []
        now = mono()
        events: list[Incoming] = []
        rest: deque[Incoming | LinkNote] = deque()
        item: Incoming | LinkNote | Burst | None = first
        taken = 0
        while item is not None:
            for one in unpack(item):
                if isinstance(one, Incoming) and "/event" in one.topic and level(self._head, one.topic) == "event":
                    events.append(one)
                else:
                    rest.append(one)
            taken += len(item) if isinstance(item, tuple) else 1
            item = self._next() if taken < self._pull else None
        if rest:
            self._chunks.append((now, rest))
        return now, events

    def handed(self, limit: int) -> Iterator[tuple[float, Incoming | LinkNote]]:
        """Up to ``limit`` of the kept messages, oldest first, each with the monotonic time it was taken."""
        while limit > 0 and self._chunks:
            at, chunk = self._chunks[0]
            while limit > 0 and chunk:
                limit -= 1
                yield at, chunk.popleft()
            if not chunk:
                self._chunks.popleft()

    def _next(self) -> Incoming | LinkNote | Burst | None:
        try:
            return self._inbox.get_nowait()
        except queue.Empty:
            return None
