"""Documents waiting for the sender: the newest status (older ones are never sent) and command replies.

Any thread hands a document in and wakes the sender; the sender takes what is
waiting after the events, and only as many as fit beside them
(:func:`beside_slots`): paho sends queued publishes in order, so a flood of
replies handed to it at once under a small Receive Maximum would hold up the
next alarm by one round trip per Receive Maximum's worth of replies.  Replies
are bounded: a flood of commands while the link is down keeps the newest
:data:`MAX_REPLIES`.  A reply in flight when its session ends goes again on
the next one (QoS 1: at least once); a status does not, the next birth says more.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

MAX_REPLIES = 100
MAX_BESIDE = 8  # status and replies unacknowledged at most where the broker sets no Receive Maximum

Reply = tuple[str, bytes]  # topic, payload


def encode(doc: dict[str, Any]) -> bytes:
    """A status, reply or will document on the wire: compact JSON, UTF-8."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def beside_slots(receive_maximum: int | None, events: int) -> int:
    """How many status documents and replies may be unacknowledged beside ``events`` in flight.

    Only the slots of the broker's Receive Maximum the events never take, so
    none waits in paho's queue ahead of an alarm; one at least, or under a
    Receive Maximum of 1 a reply would never go (it then holds an alarm up one
    round trip at most).
    """
    if receive_maximum is None:
        return MAX_BESIDE
    return max(1, min(MAX_BESIDE, receive_maximum - events))


class Outgoing:
    """The status slot and the reply queue, behind one lock never held across I/O; and what is in flight.

    What is in flight (``sent``, ``acked``, ``unacked``, ``new_session``) is the sender thread's only.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._replies: deque[Reply] = deque(maxlen=MAX_REPLIES)
        self._unacked: dict[int, tuple[float, Reply | None]] = {}  # mid -> (sent at, the reply; None: a status)

    def status(self, doc: dict[str, Any]) -> None:
        """Replace the waiting status: only the latest one is ever sent."""
        with self._lock:
            self._status = doc

    def reply(self, topic: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._replies.append((topic, encode(doc)))

    def drop_status(self) -> None:
        """A new session sends its own birth status: one waiting from before is stale."""
        with self._lock:
            self._status = None

    @property
    def waiting(self) -> bool:
        """A status or a reply waits for a slot."""
        return self._status is not None or bool(self._replies)

    def take(self, room: int = MAX_REPLIES + 1) -> tuple[dict[str, Any] | None, list[Reply]]:
        """Up to ``room`` documents: the waiting status (or None) first, then the oldest replies; they are gone."""
        with self._lock:
            status = None
            if room > 0 and self._status is not None:
                status, self._status = self._status, None
                room -= 1
            replies = [self._replies.popleft() for _ in range(min(room, len(self._replies)))]
        return status, replies

    def sent(self, mid: int | None, now: float, reply: Reply | None = None) -> None:
        """A status (``reply`` None) or ``reply`` was handed to paho as ``mid``; None: the session is going."""
        if mid is not None:
            self._unacked[mid] = (now, reply)
            if len(self._unacked) > MAX_REPLIES:  # a broker that never acks them: the oldest are given up
                del self._unacked[next(iter(self._unacked))]
        elif reply is not None:
            self._again([reply])

    def acked(self, mids: Iterable[int]) -> None:
        """PUBACKs (of any reason code) for publishes that were not events."""
        for mid in mids:
            self._unacked.pop(mid, None)

    def unacked(self, now: float, stale_s: float) -> int:
        """Publishes in flight sent less than ``stale_s`` ago: one whose PUBACK the broker lost stops counting."""
        return sum(1 for at, _ in self._unacked.values() if now - at < stale_s)

    def stale_in(self, now: float, stale_s: float) -> float:
        """Seconds until the next publish in flight stops counting (``inf`` when none will)."""
        left = [at + stale_s - now for at, _ in self._unacked.values() if now - at < stale_s]
        return max(0.0, min(left, default=math.inf))

    def new_session(self) -> None:
        """Replies in flight when the last session ended go again; the stale status is dropped."""
        self._again([r for _, r in sorted(self._unacked.values(), key=lambda v: v[0]) if r is not None])
        self._unacked.clear()
        self.drop_status()

    def _again(self, replies: list[Reply]) -> None:
        """Put ``replies`` back ahead of the waiting ones (the newest :data:`MAX_REPLIES` of all are kept)."""
        with self._lock:
            self._replies = deque([*replies, *self._replies], maxlen=MAX_REPLIES)

    def __repr__(self) -> str:
        return (
            f"<Outgoing status={'waiting' if self._status is not None else 'none'} "
            f"replies={len(self._replies)} unacked={len(self._unacked)}>"
        )
