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
again, until one of them gets a CONNACK.  A 3.1.1 CONNACK after that silence
proves only that the link is up now (an outage longer than the connect
timeout, a blackholed link, looks the same), so that session is closed at once
and MQTT 5 is tried again while the link is known up: a CONNACK keeps MQTT 5,
silence again remembers 3.1.1 (and 3.1.1 is retried at once).  Nothing else is
learnt from such a round: a retained will closed there is weighed again.

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
_SILENT_AGAIN = (
    "its MQTT 5 CONNECT got no CONNACK within the connect timeout twice, the second time just after "
    "an MQTT 3.1.1 CONNACK on the same link"
)
RECHECK = ConnectFailure(
    "recheck", "MQTT 3.1.1 answered after an unanswered MQTT 5 CONNECT; MQTT 5 once more while the link is up"
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
        self._suspect: dict[BrokerAddress, list[tuple[Dialect, str]]] = {}  # fallbacks tried, not yet proven
        self._silent_to_v5: set[BrokerAddress] = set()  # last MQTT 5 CONNECT got no answer: try 3.1.1 next
        self._closed: set[BrokerAddress] = set()  # closed before CONNACK once this round: the next close counts
        self._recheck: set[BrokerAddress] = set()  # 3.1.1 answered after an MQTT 5 silence: 5 again at once

    def first(self, broker: BrokerAddress) -> Dialect:
        """What to try first with ``broker`` (a new round of attempts: earlier suspicions are dropped)."""
        self._suspect.pop(broker, None)
        self._closed.discard(broker)
        self._recheck.discard(broker)
        if broker in self._silent_to_v5 and broker not in self._learnt:
            self._silent_to_v5.discard(broker)  # 3.1.1 once; if it is silent too, MQTT 5 again next round
            nxt = Dialect("3.1.1", retain=True)
            self._suspect[broker] = [(nxt, _SILENT)]
            return nxt
        return self._known(broker)

    def _known(self, broker: BrokerAddress) -> Dialect:
        default = Dialect("3.1.1" if self._configured == "3.1.1" else "5", retain=True)
        return self._learnt.get(broker, default)

    def fallback(self, broker: BrokerAddress, tried: Dialect, failure: ConnectFailure) -> Dialect | None:
        """The dialect to retry ``broker`` with at once, or None when the failure is not about the dialect."""
        early = self._recheck_step(broker, tried, failure)
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
                    (nxt, "it closed the connection at an MQTT 5 CONNECT, before any CONNACK")
                )
                return nxt
            if failure.kind == "timeout" and broker not in self._learnt:
                self._silent_to_v5.add(broker)  # not at once: failover to the next broker comes first
        if tried.protocol == "3.1.1" and tried.retain and failure.kind == "closed":
            nxt = Dialect("3.1.1", retain=False)
            self._suspect.setdefault(broker, []).append(
                (nxt, "it closed the connection at a CONNECT with a retained will")
            )
            return nxt
        return None

    def _recheck_step(self, broker: BrokerAddress, tried: Dialect, failure: ConnectFailure) -> Dialect | None:
        """MQTT 5 once more after a 3.1.1 CONNACK that followed its silence; silence again proves 3.1.1."""
        if failure.kind == "recheck":
            self._recheck.add(broker)
            return Dialect("5", retain=True)
        if broker in self._recheck and tried.protocol == "5":
            self._recheck.discard(broker)
            if failure.kind == "timeout":
                nxt = Dialect("3.1.1", retain=True)
                self._learn(broker, nxt, _SILENT_AGAIN)
                return nxt
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

        Returns False when the session must not be used: 3.1.1 answered right
        after an MQTT 5 silence, which may have been the link; the caller
        closes it and retries with :data:`RECHECK` (see the module's text).
        """
        suspects = self._suspect.pop(broker, [])
        self._recheck.discard(broker)
        if dialect.protocol == "3.1.1" and any(why == _SILENT for _, why in suspects):
            return False
        for tried, why in suspects:
            if tried.protocol == dialect.protocol and (tried.retain or not dialect.retain):
                self._learn(broker, tried, why)
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
