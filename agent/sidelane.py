"""What the sender publishes beside the outbox's rows: events held in memory, and photos.

Held events (agent/recorder.py) exist only while the outbox cannot store
them; they are sent directly after the outbox rows, acknowledged through the
same ``on_delivered`` path, and never acked in the outbox by the sender.
They share the send window's slots the way its own rows do
(agent/sendwindow.py): real alarms first, in any free slot; the rest in
``seq`` order, leaving the last slot free for an alarm and paced at the
window's rate (a token bucket of their own, one window deep), so 10,000 held
events never go out in one burst.
Photos (agent/photos.py) go one at a time and only while no event waits, so a
new alarm always overtakes them.  Both are settled here before the send window
sees a PUBACK, so the window only ever sees its own rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from agent.outbox import OutboxRow
from agent.sendwindow import SendWindow

if TYPE_CHECKING:  # photos are imported only by agents that take them (memory)
    from agent.photosend import PhotoDrain


class Publisher(Protocol):
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        user: tuple[tuple[str, str], ...] = (),
    ) -> int | None: ...


class SideLane:
    """Held events and photos for one uplink; all calls come from the sender thread.

    Args:
        root: the device's topic root.
        held: returns the events held in memory, in seq order.
        photos: the photo drain, or None when no input takes photos.
        on_delivered: what the uplink calls for every acknowledged event.
        window: the send window whose slots and rate held events share.
        mono: the monotonic clock, for the pacing.

    """

    def __init__(
        self,
        root: str,
        *,
        held: Callable[[], list[OutboxRow]] | None,
        photos: PhotoDrain | None,
        on_delivered: Callable[[OutboxRow], None] | None,
        window: SendWindow,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self._held = held
        self._photos = photos
        self._on_delivered = on_delivered
        self._window = window
        self._mono = mono
        self._next_send = 0.0  # when the next held routine event may go (the window's bucket, for these)
        self._inflight: dict[int, OutboxRow] = {}  # mid -> held row; reset with the window
        self._refused: set[str] = set()  # ids the broker refused on this connection: not again on it
        self.published = 0
        self.delivered = 0

    @property
    def busy(self) -> bool:
        """Held events are in flight: photos wait."""
        return bool(self._inflight)

    def send_held(self, s: Publisher) -> float:
        """Publish held events not in flight (or refused) on this connection, as far as the window allows.

        Real alarms first, then the rest; each in ``seq`` order.  Returns how
        long until the next paced event is due (``inf`` when none waits for the
        pace: a PUBACK or a new event wakes the sender).
        """
        if self._held is None:
            return math.inf
        skip = {r.id for r in self._inflight.values()} | self._refused
        rows = sorted((r for r in self._held() if r.id not in skip), key=lambda r: not r.urgent)  # stable
        w = self._window
        free = w.max_inflight - len(w) - len(self._inflight)
        spare = 1 if w.max_inflight > 1 else 0  # the window's last slot waits for an alarm
        for row in rows:
            if free <= (0 if row.urgent else spare):
                break  # a PUBACK frees a slot (and wakes the sender)
            now = self._mono()
            self._next_send = max(self._next_send, now - (w.max_inflight - 1) / w.rate)  # burst: one window
            if not row.urgent and self._next_send > now + 1e-9:  # an alarm is never paced
                return self._next_send - now
            self._next_send += 1.0 / w.rate
            mid = s.publish(f"{self.root}/event/{row.type}", row.payload)
            if mid is None:
                break
            self._inflight[mid] = row
            free -= 1
            self.published += 1
        return math.inf

    def send_photo(self, s: Publisher, *, events_idle: bool) -> None:
        """One stored photo, only while no event waits."""
        if self._photos is None:
            return
        msg = self._photos.take(events_idle=events_idle and not self._inflight)
        if msg is not None:
            mid = s.publish(msg.topic, msg.payload, content_type=msg.content_type, user=msg.user_properties)
            if mid is not None:
                self._photos.sent(mid, msg)

    def settle(self, mid: int, refusal: str | None) -> bool:
        """A PUBACK: True when ``mid`` was a held event or a photo (then it is dealt with here)."""
        if self._photos is not None and self._photos.settle(mid, refused=refusal is not None):
            return True
        held = self._inflight.pop(mid, None)
        if held is None:
            return False
        if refusal is not None:
            self._refused.add(held.id)  # stays held; sent again on the next connection
        else:
            self.delivered += 1
            if self._on_delivered is not None:
                self._on_delivered(held)
        return True

    def reset(self) -> None:
        """The connection ended: nothing of ours is in flight any more."""
        self._inflight.clear()
        self._refused.clear()
        if self._photos is not None:
            self._photos.reset()
