"""What the sender needs to publish photos: the message (no paho types) and the one-in-flight drain rule.

The rule, so an alarm is never slower because of a photo:

* a photo is taken from the store only when no event is waiting or in flight
  (the caller says so with ``events_idle``): every alarm and routine event is
  out first, and an alarm recorded later goes before any photo still waiting;
* at most one photo is in flight, so a new alarm queues behind at most one
  photo's bytes on the socket (``snapshots.max_kb``, 400 kB by default);
* a photo is deleted from the store only on its own successful PUBACK; a
  broker that refuses it (MQTT 5 reason >= 0x80, typically the ACL) gets it
  dropped and reported ``refused`` rather than retried forever, which would
  stall every later photo behind it;
* a new connection forgets what was in flight; the store still holds it, so
  it is sent again (at least once, like events);
* the photo in flight has a PUBACK deadline (:meth:`PhotoDrain.in_flight`),
  counted from when its bytes could have gone on a 64 kbit/s link: past it,
  a PUBACK for anything sent after it (brokers ack in order) or a far longer
  wait ends the connection (agent/uplink.py), or every later photo would wait
  for as long as the link lives; a link slower still only delays it;
* the sender never waits on the store nor fails for it: while a camera
  worker's commit holds it, no photo goes this round (the commit wakes the
  sender); a PUBACK the store cannot record now (busy, a full disk) is kept
  in memory, that photo is not sent again, and the delete is retried at each
  round;
* a photo bigger than the broker's Maximum Packet Size (MQTT 5 tells it in
  the CONNACK; the shipped mosquitto config has one) is never sent: the
  broker would close the connection at it, and the photo would go again at
  every connection.  It is dropped and reported ``too_large``.  Under MQTT
  3.1.1, where a broker cannot say, one that closes the connection while the
  same photo is in flight :data:`STRIKES` connections in a row (the broker or
  the link closed them, not the agent's own deadline) gets it
  dropped and reported ``refused``; under MQTT 5 a photo within the
  announced limit (or with none announced) is only ever lost to a flaky link
  by its cap, never dropped for it.

Pure bookkeeping like ``sendwindow.py``: ``uplink.py`` turns
:class:`PhotoMessage` into paho ``Properties`` and publishes it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from agent.events import iso_ms
from agent.photostore import Photo, PhotoStore

log = logging.getLogger(__name__)

CONTENT_TYPE = "image/jpeg"
STRIKES = 3  # connections in a row that ended with the same photo in flight
SLOW_LINK_BYTES_PER_S = 8000.0  # 64 kbit/s: a photo's bytes may take this long before its PUBACK is late
_TOO_BIG_PER_TAKE = 16  # photos over the broker's limit dropped in one call at most


@dataclass(frozen=True)
class PhotoMessage:
    """One photo as it goes on the wire: QoS 1, never retained, MQTT 5 content type and user properties."""

    topic: str
    payload: bytes
    content_type: str
    user_properties: tuple[tuple[str, str], ...]
    qos: int = 1
    retain: bool = False


def packet_size(message: PhotoMessage) -> int:
    """The PUBLISH packet's size in bytes under MQTT 5, within a few bytes (never less)."""
    props = 1 + 2 + len(message.content_type.encode())
    props += sum(1 + 4 + len(k.encode()) + len(v.encode()) for k, v in message.user_properties)
    rest = 2 + len(message.topic.encode()) + 2 + 4 + props + len(message.payload)
    return 1 + 4 + rest


def photo_message(root: str, photo: Photo) -> PhotoMessage:
    """The message for ``photo`` under the device's topic root ``R`` (``{prefix}/{site}/{device}``)."""
    return PhotoMessage(
        topic=f"{root}/snapshot/{photo.event_id}",
        payload=photo.jpeg,
        content_type=CONTENT_TYPE,
        user_properties=(
            ("event_id", photo.event_id),
            ("camera", photo.camera),
            ("part", f"{photo.part}/{photo.parts}"),
            ("taken", iso_ms(photo.taken)),
        ),
    )


class PhotoDrain:
    """Which photo the sender publishes next, and what a PUBACK for it means; one photo in flight at most.

    Args:
        store: the photo store (read and acked here; written by the camera workers).
        root: the device's topic root.
        on_failed: called with (event_id, camera, reason, detail) for a photo the broker refused
            (``refused``) or could not take (``too_large``).
        limit: the broker's Maximum Packet Size on the current connection, None when it said none.
        mqtt5: the current connection speaks MQTT 5 (the uplink sets both per connection).

    """

    def __init__(self, store: PhotoStore, root: str, *, on_failed: Callable[[str, str, str, str], None]) -> None:
        self.store = store
        self.root = root
        self.limit: int | None = None
        self.mqtt5 = False
        self._on_failed = on_failed
        self._inflight: tuple[int, Photo] | None = None
        self._sent_at: float | None = None  # when the photo in flight went (the sender's monotonic clock)
        self._allowance = 0.0  # seconds its bytes may take on a slow link
        self._strikes: tuple[tuple[str, str], int] | None = None  # the photo in flight when connections ended
        self._done: dict[tuple[str, str], None] = {}  # delivered or dropped, not yet deleted from the store
        self._trouble: str | None = None  # the store error last logged, so it is logged once
        self.sent_count = 0
        self.refused_count = 0

    def take(self, *, events_idle: bool) -> PhotoMessage | None:
        """The next photo's message, or None: events waiting, one photo in flight, none stored, or the store busy."""
        if not events_idle or self._inflight is not None:
            return None
        self._forget_done()
        for _ in range(_TOO_BIG_PER_TAKE):
            try:
                oldest = self.store.oldest(skip=self._done)
            except (sqlite3.Error, OSError) as exc:
                self._store_failed(exc)
                return None
            if oldest is None:
                return None
            message = photo_message(self.root, oldest)
            size = packet_size(message)
            if self.limit is None or size <= self.limit:
                return message
            self._drop(
                oldest,
                "too_large",
                f"{size} bytes on the wire, over the broker's maximum packet size ({self.limit}); "
                "raise max_packet_size on the broker or lower snapshots.max_kb",
            )
        return None

    def sent(self, mid: int, message: PhotoMessage, *, at: float | None = None) -> None:
        """``message`` went out with paho message id ``mid`` at monotonic time ``at`` (None: not timed)."""
        photo = self._photo_of(message)
        self._inflight = (mid, photo)
        self._sent_at = at
        self._allowance = len(message.payload) / SLOW_LINK_BYTES_PER_S
        self.sent_count += 1

    def in_flight(self) -> tuple[float, float, str] | None:
        """(when it went, seconds its bytes may take, what) for the timed photo in flight, or None."""
        if self._inflight is None or self._sent_at is None:
            return None
        return self._sent_at, self._allowance, f"photo {self.root}/snapshot/{self._inflight[1].event_id}"

    def sent_time(self, mid: int) -> float | None:
        """When the photo sent as ``mid`` went, if it is the one in flight and was timed."""
        return self._sent_at if self._inflight is not None and self._inflight[0] == mid else None

    def settle(self, mid: int, *, refused: bool = False) -> bool:
        """A PUBACK for ``mid``: True when it was this drain's photo (then it is acked or dropped)."""
        if self._inflight is None or self._inflight[0] != mid:
            return False
        photo = self._inflight[1]
        self._inflight = self._sent_at = None
        self._strikes = None
        if refused:
            self._drop(
                photo,
                "refused",
                f"broker refused {self.root}/snapshot/{photo.event_id}; check its ACL for {self.root}/snapshot/#",
            )
        else:
            self._done[photo.event_id, photo.camera] = None
            self._forget_done()
        return True

    def reset(self, *, by_peer: bool = True) -> None:
        """The connection ended: nothing is in flight; the store still has the photo, so it goes again.

        Unless, under MQTT 3.1.1, the broker or the link keeps ending
        connections while that same photo is in flight: a broker that closes
        the connection at a packet it will not take (over a size limit it
        cannot announce) would otherwise get it forever.  A connection the
        agent ended itself (``by_peer`` False: its PUBACK deadline on a slow
        link, a stop) says nothing about the photo and is no strike.
        """
        if self._inflight is None:
            return
        photo = self._inflight[1]
        self._inflight = self._sent_at = None
        if not by_peer:
            return
        if self.mqtt5 or self.limit is not None:  # MQTT 5: the photo fits what the broker announced
            self._strikes = None
            return
        key = (photo.event_id, photo.camera)
        count = self._strikes[1] + 1 if self._strikes is not None and self._strikes[0] == key else 1
        self._strikes = (key, count)
        if count >= STRIKES:
            self._strikes = None
            self._drop(
                photo,
                "refused",
                f"{count} connections in a row ended while {self.root}/snapshot/{photo.event_id} was in flight; "
                "is it over the broker's packet size limit (mosquitto: max_packet_size)?",
            )

    def _drop(self, photo: Photo, reason: str, detail: str) -> None:
        self._done[photo.event_id, photo.camera] = None
        self._forget_done()
        self.refused_count += 1
        self._on_failed(photo.event_id, photo.camera, reason, detail)

    def _forget_done(self) -> None:
        """Delete the photos already delivered or dropped from the store, as far as it lets us now."""
        for event_id, camera in list(self._done):
            try:
                if not self.store.try_ack(event_id, camera):
                    return  # a commit holds the store: next round
            except (sqlite3.Error, OSError) as exc:
                self._store_failed(exc)
                return
            del self._done[event_id, camera]
        if self._trouble is not None:
            log.warning("photo store %s records deliveries again", self.store.path)
            self._trouble = None

    def _store_failed(self, exc: BaseException) -> None:
        words = f"{type(exc).__name__}: {exc}"
        if words != self._trouble:
            self._trouble = words
            log.error(
                "photo store %s: %s; %d delivered photo(s) kept in memory, retried every round (events unaffected)",
                self.store.path,
                words,
                len(self._done),
            )

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    @staticmethod
    def _photo_of(message: PhotoMessage) -> Photo:
        props = dict(message.user_properties)
        part, _, parts = props["part"].partition("/")
        return Photo(props["event_id"], props["camera"], b"", 0.0, int(part), int(parts))

    def __repr__(self) -> str:
        state = f"in flight: {self._inflight[1]}" if self._inflight else "idle"
        return f"<PhotoDrain {state}, sent={self.sent_count}, refused={self.refused_count}>"
