"""What the monitor's MQTT link hands to its print loop: messages, link changes, one queue.

Plain values, no paho: :mod:`agent.central.link` fills the :data:`Inbox` on
paho's thread, :mod:`agent.central.session` empties it on its own.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
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
