"""The PUBACK deadline: when a session whose broker still answers pings has lost a publish and must end.

MQTT sends a publish again only on a new connection; a broker that answers
pings but lost a PUBLISH (or its PUBACK) would otherwise keep that event, an
alarm perhaps, in flight for as long as the link lives, and a full window
stops every event behind it (a photo: every later photo).  A slow link that
is still carrying a photo's bytes must not look like that: an event behind
the photo gets its PUBACK only after them.  So past the deadline, the session
ends only when the link acks nothing at all (for a deadline plus the photo's
byte allowance), when something sent later was acked (brokers ack in order:
the earlier one was lost), or, as a backstop, after :data:`_BACKSTOP`
deadlines.  Only a lost event makes the attempt a failed one (the next broker
is tried); a photo alone is sent again on a new connection to the same broker.

The rule is a pure function (:func:`late`) of what is waiting and what was
acked; :class:`PubackDeadline` reads both on the sender's thread, and the
uplink says it in the log and ends the session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent import failover
from agent.pubacks import PubAcks
from agent.sendwindow import SendWindow
from agent.sidelane import SideLane

Waiting = tuple[list[tuple[float, str]], tuple[float, float, str] | None]  # events (sent, what); photo in flight

_BACKSTOP = 6  # deadlines a PUBACK may take on a link that still acks something, before the session ends


def deadline_s(keepalive_s: float) -> float:
    """Seconds an event may wait for its PUBACK before the session is given up."""
    return max(failover.STABLE_S, float(keepalive_s))


@dataclass(frozen=True)
class Late:
    """A publish overdue: ``what`` waited ``waited`` seconds; ``event`` if an event was lost, not only a photo."""

    what: str
    waited: float
    event: bool


def late(waiting: Waiting, now: float, deadline: float, last_at: float, latest_sent: float) -> Late | None:
    """The publish that ends the session, or None.

    Args:
        waiting: (sent, what) for each event waiting for its PUBACK, and the photo
            in flight as (sent, byte allowance in seconds, what), or None.
        now: the monotonic time, in seconds.
        deadline: :func:`deadline_s`.
        last_at: when a PUBACK for an event or photo was last settled (or the session began).
        latest_sent: the latest send time among the events and photos acked on this session.

    """
    events, photo = waiting
    allowance = 0.0 if photo is None else photo[1]  # no PUBACK comes before the photo's bytes are through
    if events:
        sent, what = min(events)
        waited = now - sent
        busy_until = last_at if photo is None else max(last_at, photo[0] + allowance)
        quiet = now - busy_until >= deadline  # nothing acked for a deadline since the photo's bytes were through
        overdue = quiet or latest_sent > sent or waited >= _BACKSTOP * deadline + allowance
        if waited >= deadline and overdue:
            return Late(what, waited, event=True)  # a failed attempt: the broker lost an event
    if photo is not None:
        sent, _bytes_s, what = photo
        waited = now - sent - allowance
        if waited >= deadline and (latest_sent > sent or waited >= _BACKSTOP * deadline):
            return Late(what, waited + allowance, event=False)
    return None


class PubackDeadline:
    """What waits for a PUBACK on the live session, and whether it waited too long (sender's thread only)."""

    def __init__(
        self, window: SendWindow, side: SideLane, pubacks: PubAcks, keepalive_s: float, mono: Callable[[], float]
    ) -> None:
        self._window = window
        self._side = side
        self._pubacks = pubacks
        self._mono = mono
        self._keepalive_s = keepalive_s

    @property
    def deadline_s(self) -> float:
        """:func:`deadline_s`, worked out when asked."""
        return deadline_s(self._keepalive_s)

    def waiting(self) -> Waiting:
        """(when it went, what) for each event waiting for its PUBACK, and the photo in flight (with its allowance)."""
        now = self._mono()
        events = [
            (now - w[0], f"seq {w[1].seq} ({w[1].type})")
            for w in (self._window.oldest(now), self._side.oldest(now))
            if w
        ]
        return events, self._side.photo_in_flight()

    def late(self, waiting: Waiting) -> Late | None:
        """:func:`late` now, with what this session's PUBACKs said."""
        return late(waiting, self._mono(), self.deadline_s, self._pubacks.last_at, self._pubacks.latest_sent)

    def __repr__(self) -> str:
        return f"<PubackDeadline {self.deadline_s:g} s>"
