"""Documents waiting for the sender: the newest status (older ones are never sent) and command replies.

Any thread hands a document in and wakes the sender; the sender takes what is
waiting once per round, after the events (an alarm never queues behind a
status document).  Replies are bounded: a flood of commands while the link is
down keeps the newest :data:`MAX_REPLIES`.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any

MAX_REPLIES = 100


def encode(doc: dict[str, Any]) -> bytes:
    """A status, reply or will document on the wire: compact JSON, UTF-8."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class Outgoing:
    """The status slot and the reply queue, behind one lock never held across I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._replies: deque[tuple[str, bytes]] = deque(maxlen=MAX_REPLIES)

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

    def take(self) -> tuple[dict[str, Any] | None, list[tuple[str, bytes]]]:
        """The waiting status (or None) and every waiting reply; both are then gone."""
        with self._lock:
            status, self._status = self._status, None
            replies = list(self._replies)
            self._replies.clear()
        return status, replies

    def __repr__(self) -> str:
        return f"<Outgoing status={'waiting' if self._status is not None else 'none'} replies={len(self._replies)}>"
