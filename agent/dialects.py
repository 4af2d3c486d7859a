"""What each broker speaks, learnt per broker for the life of the process: MQTT version and retain.

``mqtt.protocol: auto`` (the default) tries MQTT 5 first.  A broker that
answers an MQTT 5 CONNECT with "unsupported protocol version" (CONNACK 0x84, or
0x01 in 3.1.1 form) is retried at once with 3.1.1, and so is one that closes
the socket before any CONNACK twice in a row (RabbitMQ 3.10 does).  The closing
is ambiguous (a broker restarting does it too, and a link coming back resets an
attempt that waited through the outage), so the first close of a round is
retried as it was, and the fallback is remembered only once the 3.1.1 attempt
gets a CONNACK; the explicit answer is remembered at once.  A broker
that takes an MQTT 5 CONNECT and never answers (amqtt 0.12 misreads the will in
it) is not retried at once, since a dead node behaves the same and failover must
stay quick: the next attempt on that broker is MQTT 3.1.1, the one after that 5
again, until one of them gets a CONNACK.

A CONNACK to a fallback tried after such an ambiguous failure (silence, or a
close, twice) proves only that the link is up now: an outage longer than the
connect timeout, or a link resetting attempts as it heals, looks the same.
So that session is closed unused and the dialect that failed is tried once
more while the link is known up: a CONNACK keeps it, the same failure again
remembers the fallback (which is then tried at once).  An explicit answer
(CONNACK 0x84, 0x9A) is remembered at once.

Retain works the same way for every version: a broker with retain switched off
refuses a retained will (MQTT 5: CONNACK 0x9A; mosquitto under 3.1.1 closes
the socket before CONNACK, a close weighed like the one above), announces it
(CONNACK property Retain Available 0) or drops the connection at a retained
publish (DISCONNECT 0x9A).  The agent then sends its will and status without
retain.

Each fact is logged once per broker, at WARNING, with what is lost by it.
"""

from __future__ import annotations

import logging

from agent.config.model import BrokerAddress
from agent.session import RETAIN_NOT_SUPPORTED, UNSUPPORTED_PROTOCOL, ConnectFailure, Dialect

log = logging.getLogger(__name__)

_SILENT = "its MQTT 5 CONNECT got no CONNACK within the connect timeout"
RECHECK = ConnectFailure(
    "recheck", "a fallback answered after an ambiguous failure; the dialect that failed once more while the link is up"
)
_V5_WOULD_ADD = (
    "MQTT 5 would add refusal visibility: under 3.1.1 a broker whose ACL refuses an event still acknowledges it "
    "(the agent cannot tell it was dropped) and never says why it closes a connection; "
    "upgrade the broker, or set mqtt.protocol: '3.1.1' to skip the MQTT 5 attempt"
)
_NO_RETAIN_COSTS = (
    "status and the offline will are sent without retain, so a central that subscribes later "
    "sees this device's status only at the next heartbeat; events are not affected"
)


class Dialects:
    """The dialect to use with each broker, and the one to fall back to at once after a failure."""

    def __init__(self, configured: str) -> None:
        self._configured = configured  # "auto", "5" or "3.1.1"
        self._learnt: dict[BrokerAddress, Dialect] = {}
        # fallbacks tried after an ambiguous failure, not yet proven: (fallback, why, the dialect that failed)
        self._suspect: dict[BrokerAddress, list[tuple[Dialect, str, Dialect]]] = {}
        self._silent_to_v5: set[BrokerAddress] = set()  # last MQTT 5 CONNECT got no answer: try 3.1.1 next
        self._closed: set[BrokerAddress] = set()  # closed before CONNACK once this round: the next close counts
        # a fallback that got a CONNACK, checked by trying the dialect that failed once more: (fallback, why, failed)
        self._recheck: dict[BrokerAddress, tuple[Dialect, str, Dialect]] = {}

    def first(self, broker: BrokerAddress) -> Dialect:
        """What to try first with ``broker`` (a new round of attempts: earlier suspicions are dropped)."""
        self._suspect.pop(broker, None)
        self._closed.discard(broker)
        self._recheck.pop(broker, None)
        if broker in self._silent_to_v5 and broker not in self._learnt:
            self._silent_to_v5.discard(broker)  # 3.1.1 once; if it is silent too, MQTT 5 again next round
            nxt = Dialect("3.1.1", retain=True)
            self._suspect[broker] = [(nxt, _SILENT, Dialect("5", retain=True))]
            return nxt
        return self._known(broker)

    def _known(self, broker: BrokerAddress) -> Dialect:
        default = Dialect("3.1.1" if self._configured == "3.1.1" else "5", retain=True)
        return self._learnt.get(broker, default)

    def fallback(self, broker: BrokerAddress, tried: Dialect, failure: ConnectFailure) -> Dialect | None:
        """The dialect to retry ``broker`` with at once, or None when the failure is not about the dialect."""
        early = self._recheck_step(broker, failure)
        if early is None and failure.kind == "closed" and self._close_blames(tried) and self._first_close(broker):
            early = tried  # once more as it was: see _first_close
        if early is not None:
            return early
        if failure.kind == "refused" and failure.code == RETAIN_NOT_SUPPORTED and tried.retain:
            nxt = Dialect(tried.protocol, retain=False)
            self._learn(broker, nxt, "it refused the retained will: CONNACK 0x9A Retain not supported")
            return nxt
        if tried.protocol == "5" and self._configured == "auto":
            nxt = Dialect("3.1.1", tried.retain)
            if failure.kind == "refused" and failure.code == UNSUPPORTED_PROTOCOL:
                self._learn(broker, nxt, "it answered MQTT 5 with CONNACK 0x84, unsupported protocol version")
                return nxt
            if failure.kind == "closed":
                self._suspect.setdefault(broker, []).append(
                    (nxt, "it closed the connection at an MQTT 5 CONNECT, before any CONNACK", tried)
                )
                return nxt
            if failure.kind == "timeout" and broker not in self._learnt:
                self._silent_to_v5.add(broker)  # not at once: failover to the next broker comes first
        if tried.protocol == "3.1.1" and tried.retain and failure.kind == "closed":
            nxt = Dialect("3.1.1", retain=False)
            self._suspect.setdefault(broker, []).append(
                (nxt, "it closed the connection at a CONNECT with a retained will", tried)
            )
            return nxt
        return None

    def _recheck_step(self, broker: BrokerAddress, failure: ConnectFailure) -> Dialect | None:
        """The failed dialect once more after its fallback's CONNACK; failing again the same way proves it."""
        check = self._recheck.get(broker)
        if check is None:
            return None
        fallback, why, failed = check
        if failure.kind == "recheck":
            return failed
        del self._recheck[broker]
        if failure.kind in ("timeout", "closed"):
            self._learn(broker, fallback, f"{why}, again just after a CONNACK to the fallback on the same link")
            return fallback
        return None

    def _close_blames(self, tried: Dialect) -> bool:
        """Whether a close before CONNACK would be taken for the broker refusing ``tried`` (as in fallback)."""
        return (tried.protocol == "5" and self._configured == "auto") or (tried.protocol == "3.1.1" and tried.retain)

    def _first_close(self, broker: BrokerAddress) -> bool:
        """Whether this is the round's first close before CONNACK: if so, try the same dialect once more.

        A link that comes back resets the attempt that waited through the
        outage (a proxy, a firewall or NAT dropping the flows it held), and the
        fallback tried right after it gets a CONNACK only because the link is
        up: that once cost MQTT 5 and then retain, leaving the broker's
        retained status at the will's ``offline`` (tests/faults/test_blackhole_will.py).
        A broker that means it closes the same dialect again.
        """
        if broker in self._closed:
            return False
        self._closed.add(broker)
        return True

    def answered(self, broker: BrokerAddress, dialect: Dialect, *, retain_available: bool) -> bool:
        """``broker`` sent a CONNACK to ``dialect``: a suspected fallback is proven.

        Returns False when the session must not be used: a fallback answered
        after an ambiguous failure, which may have been the link; the caller
        closes it and retries with :data:`RECHECK` (see the module's text).
        """
        suspects = self._suspect.pop(broker, [])
        self._recheck.pop(broker, None)
        for fallback, why, original in suspects:
            if fallback.protocol == dialect.protocol and (fallback.retain or not dialect.retain):
                self._recheck[broker] = (fallback, why, original)
                return False
        if not retain_available and dialect.retain:
            self._learn(broker, Dialect(dialect.protocol, retain=False), "its CONNACK says Retain Available 0")
        return True

    def retain_refused(self, broker: BrokerAddress, dialect: Dialect) -> None:
        """``broker`` dropped the session at a retained publish (DISCONNECT 0x9A)."""
        if dialect.retain:
            self._learn(
                broker,
                Dialect(dialect.protocol, retain=False),
                "it closed the session at a retained publish: DISCONNECT 0x9A Retain not supported",
            )

    def _learn(self, broker: BrokerAddress, dialect: Dialect, why: str) -> None:
        old = self._known(broker)
        self._learnt[broker] = dialect
        if old.protocol != dialect.protocol:
            log.warning(
                "broker %s does not speak MQTT 5 (%s); using MQTT 3.1.1 with it while the agent runs. %s",
                broker,
                why,
                _V5_WOULD_ADD,
            )
        if old.retain and not dialect.retain:
            log.warning("broker %s does not support retained messages (%s); %s", broker, why, _NO_RETAIN_COSTS)

    def __repr__(self) -> str:
        known = ", ".join(f"{b}: MQTT {d.protocol}{'' if d.retain else ' no retain'}" for b, d in self._learnt.items())
        return f"<Dialects {self._configured} {{{known}}}>"
