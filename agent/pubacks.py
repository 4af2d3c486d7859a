"""PUBACKs, settled on the sender's thread: delivered rows leave the outbox, refused ones wait for a retry.

paho's network thread only queues ``(mid, refusal)`` (:meth:`PubAcks.put`);
the sender settles the queue at the start of every round and at the end of a
session (:meth:`PubAcks.settle`), so the outbox and the send window are only
ever changed on its thread.  A row is deleted only on a PUBACK whose reason
code is a success: paho reports an MQTT 5 publish the broker refused as
"published", so the refusal is read here, counted, logged (CRITICAL for a real
alarm) and the row is retried by the window (agent/sendwindow.py).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

from agent.outbox import Outbox, OutboxRow
from agent.sendwindow import SendWindow, say_refused
from agent.sidelane import SideLane

log = logging.getLogger(__name__)


class PubAcks:
    """The PUBACK queue between paho's thread and the sender, and what settling it counted.

    Args:
        window: the send window: which row a mid was, and its retry if refused.
        side: held events and photos, settled by their own mids first.
        outbox: where delivered rows are deleted.
        topic_root: for the ACL hint in a refusal's log line.
        on_delivered: called for every delivered row (the recorder, the LED).

    """

    def __init__(
        self,
        window: SendWindow,
        side: SideLane,
        outbox: Outbox,
        topic_root: str,
        on_delivered: Callable[[OutboxRow], None] | None,
    ) -> None:
        # deque's append and popleft are atomic (thread-safe); the queue module would cost the
        # daemon about 0.1 MB (queue, heapq and their C parts; bench: RSS) for the same
        self._queue: deque[tuple[int, str | None]] = deque()
        self._window = window
        self._side = side
        self._outbox = outbox
        self._root = topic_root
        self._on_delivered = on_delivered
        self.delivered = 0
        self.refused = 0
        self.last_at = 0.0  # when a PUBACK of any kind was last settled (or the session began)
        self.latest_sent = -math.inf  # the latest send time among the events and photos acked this session

    def begin(self, now: float) -> None:
        """A new session: nothing acked on it yet."""
        self.last_at, self.latest_sent = now, -math.inf

    def put(self, mid: int, refusal: str | None) -> None:
        """Paho's thread: a PUBACK arrived (``refusal`` None on success, else the reason in words)."""
        self._queue.append((mid, refusal))

    def settle(self, now: float) -> set[int]:
        """Settle every PUBACK waiting; return the mids that were not events (status, replies)."""
        done: list[OutboxRow] = []
        others: set[int] = set()
        while True:
            try:
                mid, refusal = self._queue.popleft()
            except IndexError:
                break
            try:
                self._note_sent(mid, now)
                if self._side.settle(mid, refusal):
                    continue
            except Exception:  # a photo or held event's trouble must not cost the events' acks in this pass
                log.exception("settling PUBACK %d beside the outbox failed", mid)
            row, retry_in = self._window.settle(mid, refused=refusal is not None, now=now)
            if row is None:
                others.add(mid)
            elif retry_in is None:
                done.append(row)
            else:
                self._refused(row, refusal, retry_in)
        if done:
            self._outbox.ack(r.seq for r in done)
            self.delivered += len(done)
            if self._on_delivered is not None:
                for row in done:
                    self._on_delivered(row)
        return others

    def _note_sent(self, mid: int, now: float) -> None:
        """An event's or a photo's PUBACK: the link acks, and how recent what it acked was.

        A status's or a reply's does not count: a broker that lost one alarm
        while it acks the heartbeats would look alive for as long as it lasts.
        """
        at = self._window.sent_time(mid)
        if at is None:
            at = self._side.sent_time(mid)
        if at is not None:
            self.last_at = now
            self.latest_sent = max(self.latest_sent, at)

    def _refused(self, row: OutboxRow, refusal: str | None, retry_in: float) -> None:
        self.refused += 1
        say_refused(row, refusal, retry_in, self._root, kept="in the outbox")

    def __repr__(self) -> str:
        return f"<PubAcks waiting={len(self._queue)} delivered={self.delivered} refused={self.refused}>"
