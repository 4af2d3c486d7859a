"""What the link shows (status ``link`` section, CLI) and the command subscription's availability.

Events never depend on the ``cmd/+`` subscription: the uplink publishes first
and subscribes afterwards.  A broker may refuse the subscription (SUBACK
failure, an ACL) or close the whole connection at it (RabbitMQ when the
subscription queue's home node is down).  :class:`CommandRoute` records which
happened, says so in words for the status document, and decides when to try
again: after a back-off, and after a connection killed by it only once the
backlog is empty, so that a retry never costs an alarm its delivery.  Each
connection subscribes again; while its SUBACK is pending, status keeps the
last thing learnt (a reconnect does not flap it).  A SUBACK that does not come
within a deadline is a failure like a refusal (said in status, retried after
the back-off, and at once on the next connection); one that comes later still
grants the subscription.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.session import Session

log = logging.getLogger(__name__)

RETRY_MIN_S = 30.0
RETRY_MAX_S = 600.0
SUBSCRIBING = "subscribing"


class CommandHandler(Protocol):
    """Called on paho's thread per message on ``{root}/cmd/{name}``; ``retained`` is the message's retain flag."""

    def __call__(self, name: str, payload: bytes, *, retained: bool = False) -> None: ...


@dataclass(frozen=True)
class LinkState:
    """What the status document's ``link`` section and the CLI show."""

    connected: bool
    broker: str | None
    connected_since: float | None
    reconnects: int
    last_error: str | None
    inflight: int
    published: int
    delivered: int
    refused: int
    protocol: str | None = None  # "5" or "3.1.1" as negotiated with the broker in use; None before any
    retain: bool = True  # False when the broker does not support retained messages
    commands_available: bool = False
    commands_reason: str | None = None  # why commands are unavailable; None when available


class CommandRoute:
    """Whether commands reach the agent, and when to subscribe to ``cmd/+`` again.

    The state is the last thing learnt, kept across connections and through a
    reconnect's pending SUBACK, so a reconnect does not flap the status
    document: it changes only on a grant, a refusal, a SUBACK past its
    deadline, or a connection killed at the subscription.  A session's
    ``step`` is ``todo``, ``sent``, ``late`` (past the deadline, failed, but
    its SUBACK still counts) or ``done``.
    """

    def __init__(self, prefix: str, *, answer_s: float = 10.0) -> None:
        self.prefix = prefix  # {root}/cmd/
        self.answer_s = answer_s  # how long a SUBACK may take before the subscription counts as failed
        self.available = False
        self.reason: str | None = SUBSCRIBING
        self._retry_at = 0.0
        self._delay = RETRY_MIN_S
        self._after_backlog = False
        self._sent_at = 0.0  # when this connection's subscription went
        self._timed_out = False  # the last failure was a SUBACK past its deadline

    def due(self, now: float, backlog_empty: Callable[[], bool]) -> bool:
        """Time to send the subscription (``backlog_empty`` is only asked after a killed connection)."""
        return now >= self._retry_at and (not self._after_backlog or backlog_empty())

    def begin(self) -> None:
        """A new connection: one whose SUBACK was merely late last time subscribes at once."""
        if self._timed_out:
            self._retry_at = 0.0

    def granted(self) -> bool:
        """The SUBACK granted it; True when that changes what status says."""
        changed = not self.available
        self.available, self.reason = True, None
        self._delay, self._after_backlog, self._timed_out = RETRY_MIN_S, False, False
        return changed

    def failed(self, reason: str, now: float, *, killed_session: bool) -> bool:
        """Refused, or the connection died at it; True when that changes what status says."""
        changed = self.available or self.reason != reason
        self.available, self.reason, self._timed_out = False, reason, False
        self._retry_at = now + self._delay
        self._delay = min(self._delay * 2, RETRY_MAX_S)
        self._after_backlog = self._after_backlog or killed_session
        return changed

    def tend(self, s: Session, step: str, now: float, backlog_empty: Callable[[], bool]) -> tuple[str, bool]:
        """One round of session ``s``: subscribe when due, settle the SUBACK.

        ``step`` is this session's ``todo``, ``sent``, ``late`` or ``done``;
        returns the next step and whether the status document changes.
        """
        if step in ("todo", "late") and self.due(now, backlog_empty):
            if not s.subscribe(f"{self.prefix}+"):
                return step, False
            self._sent_at = now
            return "sent", False  # status keeps the last thing learnt until the SUBACK says
        answered, refusal = s.suback()
        if step not in ("sent", "late"):
            return step, False
        if not answered:
            return self._unanswered(s, now) if step == "sent" else (step, False)
        if refusal is None:
            return "done", self.granted()
        changed = self.failed(
            f"broker refused the subscription to {self.prefix}+ ({refusal}); "
            f"check the broker's ACL lets this device read {self.prefix}#",
            now,
            killed_session=False,
        )
        log.error("broker %s: %s; events keep flowing, commands are unavailable", s.broker, self.reason)
        return "todo", changed

    def wait_s(self, step: str, now: float) -> float:
        """Seconds until this session's subscription needs a look (its SUBACK's deadline, or a retry's time)."""
        if step == "sent":
            return max(0.0, self._sent_at + self.answer_s - now)
        if step in ("todo", "late") and self._retry_at > now:
            return self._retry_at - now
        return math.inf

    def _unanswered(self, s: Session, now: float) -> tuple[str, bool]:
        if now - self._sent_at < self.answer_s:
            return "sent", False
        changed = self.failed(
            f"broker did not answer the subscription to {self.prefix}+ within {self.answer_s:.0f} s",
            now,
            killed_session=False,
        )
        self._timed_out = True
        log.error("broker %s: %s; events keep flowing, commands are unavailable until a retry", s.broker, self.reason)
        return "late", changed  # a SUBACK that still comes grants it

    def ended(self, s: Session, step: str, now: float) -> None:
        """Session ``s`` is over: if its SUBACK never came, the subscription killed it."""
        if step != "sent":
            return
        self.failed(
            f"the broker closed the connection at the subscription to {self.prefix}+ ({s.lost_reason}); "
            "events are sent without commands",
            now,
            killed_session=True,
        )
        log.error(
            "broker %s closed the connection at the command subscription (%s); events keep flowing, "
            "commands are unavailable until a later retry succeeds",
            s.broker,
            s.lost_reason,
        )

    def __repr__(self) -> str:
        return f"<CommandRoute {'available' if self.available else f'unavailable: {self.reason}'}>"
