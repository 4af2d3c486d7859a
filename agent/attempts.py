"""The sender thread's outer loop: one connection attempt after another, until the uplink stops.

Mixed into :class:`agent.uplink.Uplink` (one object, one thread, one set of
fields): the uplink serves an accepted session and runs its send rounds; this
half makes the attempts around it.  Each attempt is a fresh
:class:`~agent.session.Session`; a failure about the dialect is retried on the
same broker at once in the dialect that works (agent/dialects.py), and between
attempts agent/failover.py picks the broker and the backoff.  How a session
ended (lasted, sent away, taken over, an event overdue) is kept for failover.

Its log lines are the uplink's (logger ``agent.uplink``): operators and the
fault suite (tests/faults/test_blackhole.py) read them under that name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import failover
from agent.addresses import Address
from agent.brokers import describe_attempt_error
from agent.config.model import BrokerAddress, MqttConfig
from agent.connack import ConnectFailure, Dialect
from agent.dialects import RECHECK, Dialects
from agent.eventsend import EventSender
from agent.failover import Ended, Failover
from agent.outbox import Outbox
from agent.outgoing import encode
from agent.pubacks import PubAcks
from agent.sendwindow import SendWindow
from agent.session import Session
from agent.sidelane import SideLane

log = logging.getLogger("agent.uplink")

_IDLE_WAKE_S = 10.0  # longest wait between connection attempts without showing progress (stop wakes it at once)
_NOT_THE_ADDRESS = frozenset({"stopped", "recheck"})  # failures that say nothing about the address tried
_TAKEN_OVER = 0x8E  # DISCONNECT: another client connected with this client id (mosquitto 2.0 closes first)


class Attempts:
    """The attempts half of :class:`~agent.uplink.Uplink`; every method runs on the sender thread."""

    if TYPE_CHECKING:  # the uplink's own state and steps, which these methods share
        cfg: MqttConfig
        outbox: Outbox
        progress: float
        _mono: Callable[[], float]
        _wake: threading.Event
        _stopping: threading.Event
        _failover: Failover
        _dialects: Dialects
        _session: Session | None
        _status_topic: str
        _offline: Callable[[str], dict[str, Any]]
        _connected_since: float | None
        _ended: Ended
        _overdue: bool
        _by_agent: bool
        _last_error: str | None
        _window: SendWindow
        _side: SideLane
        _events: EventSender
        _pubacks: PubAcks

        def _command(self, topic: str, payload: bytes, retained: bool) -> None: ...
        def _serve_session(self, s: Session) -> None: ...
        def _notify_link(self) -> None: ...

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.progress = self._mono()
            broker = self._failover.broker
            try:
                failure = self._attempt(broker)
            except Exception:  # e.g. an ack failing past the outbox's busy timeout: the rows stay, sent again
                log.exception("uplink: the connection to %s failed unexpectedly; reconnecting", broker)
                self._last_error = "internal error (see the log)"
                failure = ConnectFailure("internal", self._last_error)
            if self._stopping.is_set():
                break
            delay = self._failover.after(self._ended if failure is None else Ended(failure))
            nxt = self._failover.broker
            log.warning(
                "broker %s %s (%s); %d events buffered; retrying%s in %.1f s",
                broker,
                "connection lost" if failure is None else "unreachable",
                self._last_error,
                self.outbox.pending(),
                f" on {nxt}" if nxt != broker else "",
                delay,
            )
            self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        deadline = self._mono() + seconds
        while not self._stopping.is_set():
            self.progress = self._mono()
            left = deadline - self._mono()
            if left <= 0:
                return
            self._stopping.wait(min(left, _IDLE_WAKE_S))

    def _attempt(self, broker: BrokerAddress) -> ConnectFailure | None:
        """Connect to ``broker``, falling back at once to a dialect it speaks; None if a session ran.

        The name is resolved now (a DNS change is followed) and its addresses
        tried in agent/addresses.py's order; a dialect fallback goes to the
        address that answered.
        """
        try:
            found = self._failover.addresses.order(broker)
        except (OSError, UnicodeError) as exc:  # socket.gaierror; a name the IDNA codec refuses
            self._last_error = describe_attempt_error("DNS", exc, self.cfg.connect_timeout_s)
            return ConnectFailure("connect", self._last_error)
        addresses: list[Address] = found
        dialect = self._dialects.first(broker)
        while True:
            failure, at = self._connect_and_serve(broker, dialect, addresses, several=len(found) > 1)
            if failure is None or self._stopping.is_set():
                return failure
            nxt = self._dialects.fallback(broker, dialect, failure)
            if nxt is None:
                return failure
            log.info(
                "broker %s: %s; retrying at once with MQTT %s%s",
                broker,
                self._last_error,
                nxt.protocol,
                "" if nxt.retain else " without retain",
            )
            dialect = nxt
            addresses = [at] if at is not None else found

    def _connect_and_serve(
        self, broker: BrokerAddress, dialect: Dialect, addresses: list[Address], *, several: bool
    ) -> tuple[ConnectFailure | None, Address | None]:
        """Run one connection from attempt to end: its failure (None if it ran as a session) and its address."""
        self.progress = self._mono()  # each connection is given the watchdog's whole allowance (agent/daemon.py)
        will = (self._status_topic, encode(self._offline("lost")))
        try:
            s = Session(
                self.cfg,
                broker,
                dialect,
                will=will,
                wake=self._wake.set,
                on_ack=self._pubacks.put,
                on_message=self._command,
                addresses=addresses,
            )
        except (OSError, ValueError) as exc:
            self._last_error = f"cannot set up the client: {exc}"
            return ConnectFailure("setup", self._last_error), None
        self._session = s
        book, dial = self._failover.addresses, s.dial
        with s:
            failure = s.open() or s.verdict(self.cfg.connect_timeout_s, self._stopping)
            for a in dial.unreachable:
                book.failed(broker, a)
            if s.code is not None:
                usable = self._dialects.answered(broker, dialect, retain_available=s.retain_available)
                if failure is None and not usable:
                    failure = RECHECK  # closed cleanly on the way out: no will, nothing sent
            if failure is not None:
                if dial.address is not None and failure.kind not in _NOT_THE_ADDRESS:
                    book.failed(broker, dial.address)
                where = dial.at if several else None
                self._last_error = failure.words if where is None else f"{where}: {failure.words}"
                return failure, dial.address
            try:
                self._serve(s)
            finally:
                self._teardown(s)
        if dial.address is not None:
            (book.worked if failover.held_up(self._ended) else book.failed)(broker, dial.address)
        return None, dial.address

    def _serve(self, s: Session) -> None:
        began = self._mono()
        self._overdue = self._by_agent = False
        try:
            self._serve_session(s)
        finally:
            self._ended = Ended(None, self._mono() - began, s.lost_code, self._overdue)
        if s.lost_code == _TAKEN_OVER:
            log.error(
                "broker %s: another client connected with this device's client id %r and took the session over; "
                "two devices share a client id or a certificate (the broker may use its CN as the id): "
                "give each device its own",
                s.broker,
                self.cfg.client_id,
            )
        elif s.lost_code in failover.MOVE_ON:
            log.warning("broker %s: it asked the agent to use another server; trying the next broker", s.broker)

    def _teardown(self, s: Session) -> None:
        was_up = self._connected_since is not None
        self._connected_since = None
        with self._events.lock:
            self._events.live = None
        s.close()  # paho's thread has ended: no ack arrives after this
        try:
            self._pubacks.settle(self._mono())  # PUBACKs that came in after the last round still count
        finally:  # the next session's paho numbers its messages from 1 again: nothing of this one may stay
            self._window.reset()
            self._side.reset(by_peer=not self._by_agent)  # the agent's own deadline is no photo's strike
        if was_up:
            self._notify_link()
