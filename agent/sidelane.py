"""What the sender publishes beside the outbox's rows: events held in memory, and photos.

Held events (agent/recorder.py) exist only while the outbox cannot store
them; they are sent directly after the outbox rows, acknowledged through the
same ``on_delivered`` path, and never acked in the outbox by the sender.
They share the send window's slots the way its own rows do
(agent/sendwindow.py): real alarms first, in any free slot; the rest in
``seq`` order, leaving the last slot free for an alarm and paced at the
window's rate (a token bucket of their own, one window deep), so 10,000 held
events never go out in one burst; the window counts them among its slots
(``SendWindow.beside``).  One the broker refuses stays held and is sent again
on the window's schedule for a refused row (an alarm within 1 to 15 s), not
only on the next connection: a broker that refuses for a moment (a quota, an
ACL being fixed) must not keep a held alarm back for as long as the link lives.
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
from agent.sendwindow import SendWindow, refused_delay, say_refused

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
        self._sent_at: dict[int, float] = {}  # mid -> when it was published
        self._retry_at: dict[str, float] = {}  # id -> when a row the broker refused may go again
        self._refusals: dict[str, int] = {}  # id -> refusals in a row, for the backoff
        self.published = 0
        self.delivered = 0
        self.refused = 0

    @property
    def busy(self) -> bool:
        """Held events are in flight: photos wait."""
        return bool(self._inflight)

    def send_held(self, s: Publisher) -> float:
        """Publish held events not in flight (nor waiting for a refusal's retry), as far as the window allows.

        Real alarms first, then the rest; each in ``seq`` order.  Returns how
        long until the next paced event or retry is due (``inf`` when none
        waits for time: a PUBACK or a new event wakes the sender).
        """
        if self._held is None:
            return math.inf
        now = self._mono()
        busy = {r.id for r in self._inflight.values()}
        retry = math.inf
        rows = []
        for r in self._held():
            if r.id in busy:
                continue
            due = self._retry_at.get(r.id)
            if due is not None and due > now:
                retry = min(retry, due - now)
                continue
            rows.append(r)
        rows.sort(key=lambda r: not r.urgent)  # stable: seq order within each lane
        try:
            return min(retry, self._send(s, rows))
        finally:
            self._share_slots()

    def _send(self, s: Publisher, rows: list[OutboxRow]) -> float:
        """Publish ``rows`` (alarms first) while the window has slots; how long until the pace allows the next."""
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
            self._sent_at[mid] = now
            self._retry_at.pop(row.id, None)
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
                self._photos.sent(mid, msg, at=self._mono())

    def settle(self, mid: int, refusal: str | None) -> bool:
        """A PUBACK: True when ``mid`` was a held event or a photo (then it is dealt with here)."""
        if self._photos is not None and self._photos.settle(mid, refused=refusal is not None):
            return True
        held = self._inflight.pop(mid, None)
        if held is None:
            return False
        self._sent_at.pop(mid, None)
        self._share_slots()
        if refusal is not None:
            self._refused(held, refusal)
        else:
            self._refusals.pop(held.id, None)
            self.delivered += 1
            if self._on_delivered is not None:
                self._on_delivered(held)
        return True

    def oldest(self, now: float) -> tuple[float, OutboxRow] | None:
        """(seconds waited, row) of the held event in flight longest without a PUBACK, or None."""
        if not self._sent_at:
            return None
        mid = min(self._sent_at, key=self._sent_at.__getitem__)
        return now - self._sent_at[mid], self._inflight[mid]

    def photo_in_flight(self) -> tuple[float, float, str] | None:
        """(when it went, seconds its bytes may take, what) for the photo in flight without a PUBACK, or None."""
        return None if self._photos is None else self._photos.in_flight()

    def sent_time(self, mid: int) -> float | None:
        """When the held event or photo sent as ``mid`` went, or None when ``mid`` is not one of ours."""
        if (at := self._sent_at.get(mid)) is not None:
            return at
        return None if self._photos is None else self._photos.sent_time(mid)

    def reset(self, *, by_peer: bool = True) -> None:
        """The connection ended (``by_peer``: the broker or the link ended it, not the agent).

        Nothing of ours is in flight any more; a refused event may go at once.
        """
        self._inflight.clear()
        self._sent_at.clear()
        self._retry_at.clear()
        self._refusals.clear()
        self._share_slots()
        if self._photos is not None:
            self._photos.reset(by_peer=by_peer)

    def _share_slots(self) -> None:
        """Tell the window which held events are in flight: they take its slots, and it must not resend them."""
        self._window.beside_seqs = frozenset(r.seq for r in self._inflight.values())

    def _refused(self, row: OutboxRow, refusal: str) -> None:
        n = self._refusals.get(row.id, 0)
        self._refusals[row.id] = n + 1
        delay = refused_delay(n, urgent=row.urgent)
        self._retry_at[row.id] = self._mono() + delay
        self.refused += 1
        say_refused(row, refusal, delay, self.root, kept="in memory (held)")
