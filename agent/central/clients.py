"""Building the central tools' paho clients, and what the link keeps beside its connection.

:class:`~agent.central.link.CentralLink` owns the connection and its
callbacks; this module makes a client with the right id, MQTT version,
session kind, TLS and credentials, the CONNECT and DISCONNECT properties
of a persistent MQTT 5 session, and ends an MQTT 3.1.1 one.  It also holds
what became of each publish (:class:`PublishBook`) and the order in which
the brokers are tried after a failure (:func:`rotation`, :class:`Dialing`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.central.inbox import Inbox, LinkNote
from agent.central.settings import LinkSettings, tls_context
from agent.config.model import BrokerAddress
from agent.errors import AgentError

KEEPALIVE_S = 30
FAILOVER_AFTER = 2
"""A link down this many connect timeouts (10 s at the default 5 s) moves to the next broker."""
# "I do not speak this protocol": MQTT 5's 0x84, or 0x01 when a 3.1.1 broker answers a v5 CONNECT.
UNSUPPORTED_PROTOCOL = frozenset({0x84, 0x01})
VERSIONS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}


def new_client(settings: LinkSettings, client_id: str, version: str, *, clean: bool) -> mqtt.Client:
    """A paho client with our id, version, TLS and credentials, and no callbacks.

    ``clean`` is MQTT 3.1.1's ``clean_session``; under MQTT 5 the session
    kind goes with the CONNECT (:func:`connect_properties`).
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=VERSIONS[version],
        clean_session=clean if version == "3.1.1" else None,
    )
    client.connect_timeout = settings.connect_timeout_s
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if settings.username is not None:
        secret = settings.password.reveal() if settings.password is not None else None
        client.username_pw_set(settings.username, secret)
    if settings.tls is not None:
        client.tls_set_context(tls_context(settings.tls))
    return client


def connect_properties(expiry_s: int) -> Properties:
    """MQTT 5 CONNECT properties: how long the broker keeps our session (and queues for us) once we are gone."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    return props


def leaving_properties() -> Properties:
    """MQTT 5 DISCONNECT properties of a clean close: the session ends now, nothing is queued for us any more."""
    props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    return props


def forget_session(settings: LinkSettings, client_id: str, broker: BrokerAddress) -> None:
    """End an MQTT 3.1.1 persistent session, which has no expiry: a clean connect with its id discards it."""
    answered = threading.Event()
    client = new_client(settings, client_id, "3.1.1", clean=True)
    client.on_connect = lambda *_a: answered.set()
    try:
        client.connect(broker.host, broker.port, keepalive=KEEPALIVE_S)
    except (OSError, ValueError):
        return  # the broker's own limit will do it (mosquitto: persistent_client_expiration)
    client.loop_start()
    try:
        answered.wait(settings.connect_timeout_s)
    finally:
        client.disconnect()  # closes the socket too when no CONNACK came
        client.loop_stop()


def rotation(brokers: Sequence[BrokerAddress], current: BrokerAddress | None) -> list[BrokerAddress]:
    """The brokers to try after ``current`` failed: the ones after it in order, then the ones before, itself last."""
    if current not in brokers:
        return list(brokers)
    at = brokers.index(current) + 1
    return [*brokers[at:], *brokers[:at]]


class PublishBook:
    """What became of each QoS 1 publish: one token per publish, settled by its PUBACK on paho's thread.

    paho numbers messages per client and starts at 1 again with each new
    client (every failover makes one), so a publish is known here by its own
    token, bound to (client generation, mid).  A PUBACK can come before the
    publishing thread binds its token; it waits in ``_early`` until then.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tokens = itertools.count(1)
        self._flying: dict[tuple[int, int], int] = {}
        self._early: dict[tuple[int, int], str | None] = {}
        self._done: dict[int, str | None] = {}
        self._ignored: set[int] = set()

    def __repr__(self) -> str:
        return f"<PublishBook {len(self._flying)} awaiting a PUBACK, {len(self._done)} settled>"

    def bind(self, generation: int, mid: int) -> int:
        """A token for the message ``mid`` just handed to the client of ``generation``."""
        with self._cond:
            token = next(self._tokens)
            key = (generation, mid)
            if key in self._early:
                self._done[token] = self._early.pop(key)
            else:
                self._flying[key] = token
            return token

    def settle(self, generation: int, mid: int, why: str | None) -> None:
        """The broker's answer to ``mid``: ``None`` taken, else why it refused (paho's thread)."""
        with self._cond:
            token = self._flying.pop((generation, mid), None)
            if token is None:
                self._early[(generation, mid)] = why
            elif token in self._ignored:
                self._ignored.discard(token)
            else:
                self._done[token] = why
                self._cond.notify_all()

    def take(self, token: int) -> tuple[bool, str | None]:
        """(settled, why) without waiting; a settled token is forgotten once read."""
        with self._cond:
            if token in self._done:
                return True, self._done.pop(token)
            return False, None

    def wait(self, token: int, timeout: float) -> tuple[bool, str | None]:
        """As :meth:`take`, waiting up to ``timeout`` seconds; an unsettled token is then forgotten."""
        with self._cond:
            self._cond.wait_for(lambda: token in self._done, timeout)
        settled = self.take(token)
        if not settled[0]:
            self.forget(token)
        return settled

    def forget(self, token: int) -> None:
        """Nobody will ask about ``token`` any more: a PUBACK that still comes is dropped."""
        with self._cond:
            self._done.pop(token, None)
            if token in self._flying.values():
                self._ignored.add(token)

    def drop_generation(self, generation: int) -> None:
        """The client of ``generation`` is gone: its messages will never be answered; keep nothing for them."""
        with self._cond:
            for key in [k for k in self._flying if k[0] == generation]:
                self._ignored.discard(self._flying.pop(key))
            for key in [k for k in self._early if k[0] == generation]:
                del self._early[key]


class Dialing:
    """Which broker and MQTT version the link uses: at connect, and on failover (mixed into the link).

    Failover, with more than one broker: paho retries the broker it has for
    ever, so a thread of our own watches, and once the link has been down
    :data:`FAILOVER_AFTER` connect timeouts, drops that client and tries the
    other brokers in turn (:func:`rotation`), with the same client id and
    session kind; the subscriptions are renewed as after any reconnect.
    """

    if TYPE_CHECKING:  # the link's own state and steps, which these methods share
        settings: LinkSettings
        client_id: str
        broker: BrokerAddress | None
        down_since: float | None
        _inbox: Inbox
        _wall: Callable[[], float]
        _client: mqtt.Client | None
        _topics: list[str]
        _version: str
        _refused_code: int | None
        _closed_early: bool
        _up: bool
        _closing: bool
        _listening_since: float | None
        _down_mono: float | None
        _swap: threading.Lock
        _halt: threading.Event
        _watch: threading.Thread | None
        _rounds_failed: int

        def _attempt(self, broker: BrokerAddress) -> str | None: ...
        def _drop_client(self, *, end_session: bool = False) -> None: ...
        def _renew(self, client: mqtt.Client, said: str) -> None: ...

    def connect(self) -> BrokerAddress:
        """Connect to the first broker that answers; with several, watch for failover from then on.

        Raises:
            AgentError: no broker could be reached; the message names each
                ``host:port`` tried and why it failed.

        """
        failures: list[str] = []
        for broker in self.settings.brokers:
            why = self._try(broker)
            if why is None:
                self.broker = broker
                self._start_watch()
                return broker
            failures.append(f"{broker} ({why})")
        if len(failures) == 1:
            raise AgentError(f"cannot reach broker {failures[0]}")
        raise AgentError(f"cannot reach any broker: {'; '.join(failures)}")

    def _try(self, broker: BrokerAddress) -> str | None:
        """Connect to ``broker``, falling back from MQTT 5 to 3.1.1 under ``auto``; ``None`` when up.

        A close before any CONNACK is no proof: a link resetting as it heals,
        or a broker still starting, closes a connection too.  So when MQTT
        3.1.1 answers after one, the 3.1.1 session is closed unused and MQTT
        5 is tried once more on the link now known to work; only a second
        close keeps the monitor on 3.1.1.
        """
        why = self._attempt(broker)
        if why is None or self.settings.protocol != "auto" or self._version != "5":
            return why
        if self._refused_code not in UNSUPPORTED_PROTOCOL and not self._closed_early:
            return why
        closed_early = self._closed_early
        retry = self._fall_back(broker, recheck=closed_early)
        if retry is None:
            if self._version == "3.1.1":
                self._inbox.put(
                    LinkNote(
                        up=True,
                        text=f"{broker} does not speak MQTT 5 ({why}); using MQTT 3.1.1, "
                        "which cannot report a refused publish",
                    )
                )
            return None
        self._version = "5"
        if closed_early and self._closed_early:  # the same answer to both: say it once
            return f"{why}; MQTT 3.1.1 the same"
        return f"MQTT 5: {why}; MQTT 3.1.1: {retry}"

    def _fall_back(self, broker: BrokerAddress, *, recheck: bool) -> str | None:
        """MQTT 3.1.1 on ``broker``; with ``recheck``, MQTT 5 once more when 3.1.1 answers.  None when up."""
        self._version = "3.1.1"
        retry = self._attempt(broker)
        if retry is not None or not recheck:
            return retry
        self._drop_client()
        self._version = "5"
        if self._attempt(broker) is None:
            return None
        self._version = "3.1.1"  # MQTT 5 failed again, whichever way: 3.1.1 just worked here
        return self._attempt(broker)

    def _start_watch(self) -> None:
        if len(self.settings.brokers) > 1 and self._watch is None:
            self._watch = threading.Thread(target=self._watch_loop, name=f"{self.client_id}-failover", daemon=True)
            self._watch.start()

    def _watch_loop(self) -> None:
        patience = FAILOVER_AFTER * self.settings.connect_timeout_s
        while not self._halt.wait(min(1.0, patience / 4)):
            since = self._down_mono
            if not self._up and since is not None and time.monotonic() - since >= patience:
                self._fail_over(since)

    def _fail_over(self, down_since: float) -> None:
        """Drop the client stuck on the dead broker and try the others in turn, the same one last."""
        failures: list[str] = []
        with self._swap:
            old = self.broker
            self._drop_client()
            for broker in rotation(self.settings.brokers, old):
                if self._closing:
                    return
                why = self._try(broker)
                if why is None:
                    self.broker, self._rounds_failed = broker, 0
                    said = f"moved to broker {broker}: {old} unreachable for {time.monotonic() - down_since:.0f} s"
                    self._moved(said if broker != old else f"reconnected to {broker}")
                    return
                failures.append(f"{broker} ({why})")
            self._down_mono = time.monotonic()  # the next round after as long again
            self._rounds_failed += 1
        if self._rounds_failed == 1:  # once per outage, not every round
            text = f"no broker answers: {'; '.join(failures)}; trying each in turn until one does"
            self._inbox.put(LinkNote(up=False, text=text))

    def _moved(self, said: str) -> None:
        client = self._client
        if client is not None and self._topics:
            self._renew(client, said)
        else:  # nothing to renew: heard as soon as it is up
            self._listening_since, self.down_since = self._wall(), None
            self._inbox.put(LinkNote(up=True, text=said))
