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
  it is sent again (at least once, like events).

Pure bookkeeping like ``sendwindow.py``: ``uplink.py`` turns
:class:`PhotoMessage` into paho ``Properties`` and publishes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.events import iso_ms
from agent.photostore import Photo, PhotoStore

CONTENT_TYPE = "image/jpeg"


@dataclass(frozen=True)
class PhotoMessage:
    """One photo as it goes on the wire: QoS 1, never retained, MQTT 5 content type and user properties."""

    topic: str
    payload: bytes
    content_type: str
    user_properties: tuple[tuple[str, str], ...]
    qos: int = 1
    retain: bool = False


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
        on_failed: called with (event_id, camera, "refused", detail) for a photo the broker refused.

    """

    def __init__(self, store: PhotoStore, root: str, *, on_failed: Callable[[str, str, str, str], None]) -> None:
        self.store = store
        self.root = root
        self._on_failed = on_failed
        self._inflight: tuple[int, Photo] | None = None
        self.sent_count = 0
        self.refused_count = 0

    def take(self, *, events_idle: bool) -> PhotoMessage | None:
        """The next photo's message, or None: events waiting, one photo already in flight, or none stored."""
        if not events_idle or self._inflight is not None:
            return None
        oldest = self.store.pending(1)
        return photo_message(self.root, oldest[0]) if oldest else None

    def sent(self, mid: int, message: PhotoMessage) -> None:
        """``message`` went out with paho message id ``mid``."""
        photo = self._photo_of(message)
        self._inflight = (mid, photo)
        self.sent_count += 1

    def settle(self, mid: int, *, refused: bool = False) -> bool:
        """A PUBACK for ``mid``: True when it was this drain's photo (then it is acked or dropped)."""
        if self._inflight is None or self._inflight[0] != mid:
            return False
        photo = self._inflight[1]
        self._inflight = None
        self.store.ack(photo.event_id, photo.camera)
        if refused:
            self.refused_count += 1
            self._on_failed(
                photo.event_id,
                photo.camera,
                "refused",
                f"broker refused {self.root}/snapshot/{photo.event_id}; check its ACL for {self.root}/snapshot/#",
            )
        return True

    def reset(self) -> None:
        """A new connection: nothing is in flight; the store still has the photo, so it goes again."""
        self._inflight = None

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
