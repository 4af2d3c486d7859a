"""A connection attempt up to its CONNACK, in plain values: the dialect offered, the verdict, its words.

Kept apart from agent/session.py (the daemon's only paho importer, which
re-exports these names) so that what an attempt came to is decided without
paho's types: :class:`Dialect` is what an attempt offers (agent/dialects.py
learns it per broker), :class:`ConnectFailure` is why it failed, in words a
person can act on (agent/failover.py counts it), and :class:`ConnackWait`,
mixed into :class:`~agent.session.Session`, waits for the broker's answer on
the sender's thread and judges it.  Nothing here imports paho.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.session import _Client

UNSUPPORTED_PROTOCOL = 0x84  # CONNACK; paho also maps a 3.1.1-form CONNACK 0x01 to it
RETAIN_NOT_SUPPORTED = 0x9A  # CONNACK (a retained will) or DISCONNECT (a retained publish)
_LOGIN_REFUSED = frozenset({0x86, 0x87, 0x8A, 0x8C})  # bad user/password, not authorised, banned, bad auth
_STOP_CHECK_S = 0.2  # the CONNACK wait looks at the stop flag this often


@dataclass(frozen=True)
class Dialect:
    """How to talk to one broker: the MQTT version and whether retain may be used."""

    protocol: str  # "5" or "3.1.1"
    retain: bool


@dataclass(frozen=True)
class ConnectFailure:
    """Why an attempt ended before a successful CONNACK, with the stage it failed in.

    ``kind`` is ``setup``, ``connect`` (TCP or TLS, named in ``words``),
    ``timeout`` (no CONNACK), ``stopped`` (the agent stopped while waiting
    for it), ``closed`` (closed before any CONNACK),
    ``refused`` (a CONNACK with a failure ``code``), ``lost`` (closed right
    after an accepting CONNACK) or ``recheck`` (accepted, but closed unused to
    try MQTT 5 again: agent/dialects.py).
    """

    kind: str
    words: str
    code: int | None = None


def refusal_words(code: int, words: str) -> str:
    """A refused CONNACK in words, blaming the credentials only when the code says so."""
    if code in _LOGIN_REFUSED:
        return f"CONNACK refused: {words}; check mqtt.username, password_file or the client certificate"
    if code == UNSUPPORTED_PROTOCOL:
        return f"CONNACK refused: {words}; the broker does not speak this MQTT version (mqtt.protocol)"
    if code == RETAIN_NOT_SUPPORTED:
        return f"CONNACK refused: {words} (the broker has retain switched off)"
    return f"CONNACK refused: {words}"


def positive(value: object) -> int | None:
    """A CONNACK property that is a positive integer, else None (absent: no limit)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class ConnackWait:
    """The CONNACK half of :class:`~agent.session.Session`: its wait and its verdict, on the sender's thread."""

    if TYPE_CHECKING:  # the session's own state, written by paho's thread before it sets ``connack``
        dialect: Dialect
        client: _Client
        connack: threading.Event
        code: int | None
        code_words: str
        retain_available: bool
        lost: threading.Event
        lost_reason: str | None

    def verdict(self, timeout_s: float, stop: threading.Event | None = None) -> ConnectFailure | None:
        """Wait for the CONNACK; None when accepted.  ``stop`` is looked at every 0.2 s (a blackholed broker)."""
        deadline = time.monotonic() + timeout_s
        got = self.connack.is_set()
        while not got and (left := deadline - time.monotonic()) > 0:
            if stop is not None and stop.is_set():
                return ConnectFailure("stopped", "stopping before the CONNACK came")
            got = self.connack.wait(min(left, _STOP_CHECK_S))
        if self.code is None:
            if not got:
                return ConnectFailure(
                    "timeout", f"no CONNACK within {timeout_s:g} s (the broker accepted TCP but did not answer MQTT)"
                )
            return self._closed_before_connack()
        if self.code >= 0x80:
            return ConnectFailure("refused", refusal_words(self.code, self.code_words), self.code)
        if self.lost.is_set():
            return ConnectFailure("lost", f"connection lost right after CONNACK ({self.lost_reason})")
        return None

    def _closed_before_connack(self) -> ConnectFailure:
        alert = self.client.tls_alert
        if alert is not None:  # not about the MQTT version: no dialect to fall back to
            return ConnectFailure(
                "connect",
                f"the broker ended TLS before CONNACK ({alert}); check the client certificate "
                "(mqtt.tls.cert_file: expired, or not signed by a CA the broker trusts)",
            )
        return ConnectFailure(
            "closed", f"closed by the broker before CONNACK (MQTT {self.dialect.protocol}: {self.lost_reason})"
        )

    @property
    def can_retain(self) -> bool:
        """Whether retained publishes are allowed: the dialect says so and the CONNACK did not say otherwise."""
        return self.dialect.retain and self.retain_available
