"""The monitor's side of MQTT: connect, subscribe, publish and wait; paho stays in here.

What :mod:`agent.uplink` is for the agent, this is for ``campus-agent monitor``
and ``campus-agent ack``: messages leave as :class:`Incoming` values, link
changes as :class:`LinkNote`, and failures as :class:`~agent.errors.AgentError`
in words a technician can act on.

A random ``monitor-<hex>`` client id, the same for the life of the process:
never the ``client_id`` from the agent's config, which would push the agent
itself off the broker (session takeover).  The monitor keeps a persistent
session (MQTT 5 ``clean_start`` false with a session expiry of
``LinkSettings.session_expiry_s``, MQTT 3.1.1 ``clean_session`` false), so an
alarm published while its link is down waits at the broker instead of being
dropped for want of a subscriber; redelivered copies are de-duplicated by the
fleet view.  Statuses are QoS 0 and not queued: the subscriptions are renewed
after every reconnect so the broker sends every retained status again, and
:attr:`CentralLink.listening_since` stays ``None`` until that SUBACK.  A
clean close ends the session (MQTT 5: DISCONNECT with expiry 0; 3.1.1: a
clean connect with the same id), so brokers do not keep the sessions of
monitors that exited; a killed monitor's lingers until its expiry (MQTT 5)
or the broker's own limit (3.1.1: mosquitto ``persistent_client_expiration``).
``campus-agent ack`` sets the expiry to 0: a clean session, nothing kept.

Protocol ``auto`` (the default) tries MQTT 5 and, when the broker says it
does not speak it (CONNACK 0x84, or 0x01 in 3.1.1 form) or closes the socket
before any CONNACK twice (a single close may be a link resetting), tries MQTT
3.1.1 on the same broker at once, and keeps to it for the life of the process.  TLS always verifies the broker's
certificate against ``--cafile`` (or the system's CAs), TLS 1.2 at least;
there is no switch to turn that off.

With more than one broker, a link down for two connect timeouts moves to
the next broker, round robin (:class:`~agent.central.clients.Dialing`),
and a line names it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.brokers import describe_connect_error
from agent.central import reader
from agent.central.clients import (
    KEEPALIVE_S,
    UNSUPPORTED_PROTOCOL,
    Dialing,
    PublishBook,
    connect_properties,
    forget_session,
    leaving_properties,
    new_client,
)
from agent.central.inbox import Burst, Inbox, Incoming, LinkNote, unpack
from agent.central.settings import DEFAULT_CONNECT_TIMEOUT_S, LinkSettings
from agent.central.wire import Publish
from agent.closing import Closing
from agent.config.model import BrokerAddress
from agent.errors import AgentError

__all__ = ["Burst", "CentralLink", "Inbox", "Incoming", "LinkNote", "unpack"]

_NO_SESSION = " (the broker kept no session for us: events sent meanwhile are not shown; see the devices' seq)"


class CentralLink(Dialing, Closing):
    """One MQTT connection for a monitor or an ack; use as a context manager.

    Args:
        settings: brokers (tried in order), TLS and credentials.
        inbox: where messages and link notes go; paho's thread only puts here.
        name: the client id prefix, ``monitor`` or ``ack``.
        wall: the clock that stamps ``Incoming.arrival``.

    """

    def __init__(
        self, settings: LinkSettings, inbox: Inbox, *, name: str = "monitor", wall: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.client_id = f"{name}-{uuid.uuid4().hex[:12]}"
        self._inbox = inbox
        self._wall = wall
        self._client: mqtt.Client | None = None
        self.broker: BrokerAddress | None = None
        self._topics: list[str] = []
        self._done = threading.Condition()
        self._results: dict[int, str | None] = {}
        self._book = PublishBook()
        self._generation = 0
        self._session_present = False
        self._rounds_failed = 0
        self._down_mono: float | None = None
        self._swap = threading.Lock()
        self._halt = threading.Event()
        self._watch: threading.Thread | None = None
        self._renewals: set[int] = set()
        self._connack = threading.Event()
        self._refused: str | None = None
        self._refused_code: int | None = None
        self._closed_early = False
        self._version = "5" if settings.protocol == "auto" else settings.protocol
        self._up = False
        self._closing = False
        self._persistent = settings.session_expiry_s > 0
        self._listening_since: float | None = None
        self.down_since: float | None = None
        """Wall time the link was lost; ``None`` again once the renewed subscriptions are confirmed."""

    @property
    def closed(self) -> bool:
        return self._closing

    def _repr_id(self) -> str:
        return self.client_id

    def _repr_state(self) -> str:
        return f"connected to {self.broker}" if self._up else "not connected"

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def listening_since(self) -> float | None:
        """Wall time the subscriptions were confirmed (SUBACK) since the last connect; ``None`` until then.

        Between a reconnect's CONNACK and its SUBACK the monitor hears the
        queued events but no status yet: heartbeat deadlines must wait.
        """
        return self._listening_since if self._up else None

    @property
    def protocol(self) -> str:
        """The MQTT version in use (or to be tried next): ``5`` or ``3.1.1``."""
        return self._version

    def subscribe(self, topics: Sequence[str], timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        """Subscribe and wait for the SUBACK; renewed after every reconnect.

        Status topics (ending ``/status``) at QoS 0, everything else at QoS 1.
        A status is a retained snapshot repeated every heartbeat: one lost to
        a broker under pressure is replaced by the next, a silent device is
        still caught by its heartbeat deadline, and a reconnect brings every
        retained status again.  QoS 0 saves the PUBACK per heartbeat, about a
        fifth of the monitor's CPU at 20,000 devices.  Events and replies stay
        QoS 1: an alarm is never left to chance.
        """
        client = self._connected_client()
        self._topics = list(topics)
        rc, mid = client.subscribe(_with_qos(self._topics))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise AgentError(f"could not subscribe on {self.broker}: {mqtt.error_string(rc)}")
        why = self._wait(mid, timeout, "SUBACK")
        if why is not None:
            raise AgentError(f"broker {self.broker} refused the subscription ({why}); check its ACL for this user")
        self._listening_since = self._wall()

    def publish(self, topic: str, payload: bytes, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        """Publish at QoS 1 and wait for a successful PUBACK (``campus-agent ack``: nothing else to do meanwhile)."""
        settled, why = self._book.wait(self.send(topic, payload), timeout)
        if not settled:
            raise AgentError(f"no PUBACK from {self.broker} within {timeout:g} s")
        if why is not None:
            raise AgentError(
                f"broker {self.broker} refused the publish to {topic} ({why}); check its ACL for this user"
            )

    def send(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 without waiting; a token for :meth:`settled`.

        Once this returns, paho holds the message and sends it again after a
        reconnect until the broker takes it: it may be delivered at any later
        time, whatever :meth:`settled` has said so far.

        Raises:
            AgentError: the link is down, or paho would not take the message:
                nothing was queued.

        """
        client, generation = self._connected_client(), self._generation
        info = client.publish(topic, payload, qos=1)
        # NO_CONN: paho noticed a drop first, and keeps the message for the reconnect
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise AgentError(f"could not publish to {topic}: {mqtt.error_string(info.rc)}")
        return self._book.bind(generation, info.mid)

    def settled(self, token: int) -> tuple[bool, str | None]:
        """Whether the broker answered the :meth:`send` of ``token``; a settled token is forgotten.

        (False, None): not yet; (True, None): taken; (True, why): refused.
        """
        return self._book.take(token)

    def forget(self, token: int) -> None:
        """Stop tracking a :meth:`send` whose answer nobody waits for any more."""
        self._book.forget(token)

    def close(self) -> None:
        """Disconnect, ending our session on the broker, and stop paho's thread; safe to call more than once."""
        self._closing = True
        self._halt.set()
        with self._swap:  # a failover under way finishes its attempt first
            was_up = self._up
            self._drop_client(end_session=True)
        if was_up and self._persistent and self._version == "3.1.1" and self.broker is not None:
            forget_session(self.settings, self.client_id, self.broker)

    def _drop_client(self, *, end_session: bool = False) -> None:
        client, self._client = self._client, None
        self._up = False  # before the DISCONNECT: a session closed on purpose is no lost link
        if client is not None:
            if end_session and self._persistent and self._version == "5":
                client.disconnect(properties=leaving_properties())
            else:
                client.disconnect()
            client.loop_stop()
            self._book.drop_generation(self._generation)
        self._up = False
        self._listening_since = None

    # ---- inside ------------------------------------------------------------------

    def _attempt(self, broker: BrokerAddress) -> str | None:
        """One connection attempt; ``None`` when it is up, else why not."""
        self._connack.clear()
        self._refused, self._refused_code, self._closed_early = None, None, False
        try:
            client = self._make_client()
            if self._version == "5":
                props = connect_properties(self.settings.session_expiry_s)
                client.connect(
                    broker.host, broker.port, keepalive=KEEPALIVE_S, clean_start=not self._persistent, properties=props
                )
            else:
                client.connect(broker.host, broker.port, keepalive=KEEPALIVE_S)
        except (OSError, ValueError) as exc:
            return describe_connect_error(exc, self.settings.connect_timeout_s)
        self._client = client
        client.loop_start()
        why = (
            self._refusal()
            if self._connack.wait(self.settings.connect_timeout_s)
            else (f"no CONNACK within {self.settings.connect_timeout_s:g} s")
        )
        if why is not None:
            self._drop_client()
        return why

    def _refusal(self) -> str | None:
        return self._refused

    def _make_client(self) -> mqtt.Client:
        client = new_client(self.settings, self.client_id, self._version, clean=not self._persistent)
        self._generation += 1
        client.user_data_set(self._generation)  # tells a PUBACK of this client from one of a client dropped
        reader.install(client, self._deliver)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        return client

    def _connected_client(self) -> mqtt.Client:
        if self._client is None or not self._up:
            raise AgentError("not connected to a broker")
        return self._client

    def _wait(self, mid: int, timeout: float, what: str) -> str | None:
        deadline = time.monotonic() + timeout
        with self._done:
            try:
                while mid not in self._results:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise AgentError(f"no {what} from {self.broker} within {timeout:g} s")
                    self._done.wait(left)
                return self._results[mid]
            finally:
                self._results.pop(mid, None)

    # paho's network thread: record, queue, notify; nothing that blocks.

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self._refused_code = rc.value
            hint = (
                "the broker does not speak this MQTT version; try --protocol"
                if rc.value in UNSUPPORTED_PROTOCOL
                else "check the username, password or certificate"
            )
            self._refused = f"broker refused the connection: {rc}; {hint}"
            self._connack.set()
            return
        self._listening_since, self._down_mono = None, None
        self._session_present = bool(getattr(flags, "session_present", True))
        if self._connack.is_set() and self._topics:
            self._renew(client, f"reconnected to {self.broker}")
        elif self._connack.is_set():  # a reconnect with nothing to renew: heard as soon as it is up
            self._listening_since, self.down_since = self._wall(), None
        self._up = True
        self._connack.set()

    def _renew(self, client: mqtt.Client, said: str) -> None:
        """Subscribe again and say so; nobody waits for this SUBACK.

        Renewed so that the broker sends every retained status again: QoS 0 ones are not queued.
        """
        _rc, mid = client.subscribe(_with_qos(self._topics))
        if mid is not None:
            self._renewals.add(mid)
        lost = "" if self._session_present or not self._persistent else _NO_SESSION
        self._inbox.put(LinkNote(up=True, text=f"{said}{lost}"))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        was_up, self._up = self._up, False
        self._listening_since = None
        if was_up and self.down_since is None:
            self.down_since = self._wall()
        if was_up:
            self._down_mono = time.monotonic()
        if not self._connack.is_set():
            self._closed_early = True
            self._refused = (
                f"the broker closed the connection before answering ({rc}); does it want TLS or a "
                "client certificate (--cafile, --cert/--key), or another MQTT version (--protocol)?"
            )
            self._connack.set()
        elif was_up and not self._closing:
            self._inbox.put(LinkNote(up=False, text=f"lost the connection to {self.broker} ({rc}); reconnecting"))

    def _deliver(self, pubs: list[Publish]) -> None:
        """What the lean reader decoded in one read (:mod:`agent.central.reader`): the common case, one hand-off."""
        at = self._wall()
        self._inbox.put(
            tuple(Incoming(p.topic, p.payload, p.retain, at, p.content_type, p.user_properties) for p in pubs)
        )

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """A PUBLISH paho decoded: QoS 2, a topic alias, or a paho the lean reader cannot hook."""
        props = getattr(msg, "properties", None)
        if props is None:
            self._inbox.put(Incoming(msg.topic, bytes(msg.payload), bool(msg.retain), self._wall()))
            return
        kind = getattr(props, "ContentType", None)
        pairs = tuple((str(k), str(v)) for k, v in getattr(props, "UserProperty", ()))
        self._inbox.put(
            Incoming(
                msg.topic,
                bytes(msg.payload),
                bool(msg.retain),
                self._wall(),
                kind if isinstance(kind, str) else None,
                pairs,
            )
        )

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        if mid in self._renewals:
            self._renewals.discard(mid)
            refused = [str(rc) for rc in rcs if rc.is_failure]
            if refused:
                why = f"broker {self.broker} refused the renewed subscription ({', '.join(refused)}); check its ACL"
                self._inbox.put(LinkNote(up=False, text=why))
            self._listening_since, self.down_since = self._wall(), None
            return
        refused = [str(rc) for rc in rcs if rc.is_failure]
        self._settle(mid, ", ".join(refused) if refused else None)

    def _on_publish(self, _c: Any, generation: int, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._book.settle(generation, mid, str(rc) if rc.is_failure else None)

    def _settle(self, mid: int, why: str | None) -> None:
        with self._done:
            self._results[mid] = why
            self._done.notify_all()


def _with_qos(topics: Sequence[str]) -> list[tuple[str, int]]:
    return [(t, 0 if t.endswith("/status") else 1) for t in topics]
