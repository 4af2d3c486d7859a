"""The broker's Receive Maximum, and what the sender makes of it: events in flight, and a slot beside them.

An MQTT 5 broker may close the connection of a client with more QoS 1
publishes unacknowledged than it announced (EMQX: DISCONNECT 0x93); paho
would send them all.  paho is held to the broker's figure too, so a status or
a photo beside the events never goes over it (it waits in paho's queue), and
the events keep one slot free for them.  A broker that takes one at a time
leaves no slot beside the events: no photo is sent on it, so an alarm never
waits behind one.

Worked out once per session on the sender's thread, before its first
publish; its log lines are the uplink's (logger ``agent.uplink``).
"""

from __future__ import annotations

import logging
from typing import Protocol

from agent.config.model import BrokerAddress

log = logging.getLogger("agent.uplink")


class Limited(Protocol):
    """The part of :class:`~agent.session.Session` read here: its broker's figure, and paho's limit to set."""

    @property
    def broker(self) -> BrokerAddress: ...

    @property
    def receive_maximum(self) -> int | None: ...

    def limit_inflight(self, n: int) -> None: ...


def inflight_for(s: Limited, max_inflight: int, *, photos: bool) -> tuple[int, bool]:
    """Events in flight at most on ``s`` (``max_inflight``, within its Receive Maximum), and whether a photo fits.

    Args:
        s: the session, once its CONNACK is in; paho's limit is set to the broker's figure.
        max_inflight: the config's ``mqtt.max_inflight``.
        photos: whether this agent sends photos (only then is a Receive Maximum of 1 worth a warning).

    """
    r = s.receive_maximum
    photo_slot = r is None or r > 1
    if r is None:
        return max_inflight, photo_slot
    s.limit_inflight(r)
    if not photo_slot and photos:
        log.warning(
            "broker %s takes one unacknowledged publish at a time (Receive Maximum 1): photos are not sent "
            "on it, so an alarm never waits behind one; raise its receive maximum",
            s.broker,
        )
    if r < max_inflight + 1:
        log.info(
            "broker %s takes %d unacknowledged publishes at most; events in flight: %d", s.broker, r, max(1, r - 1)
        )
    return min(max_inflight, max(1, r - 1)), photo_slot
