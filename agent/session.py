"""One connection to one broker: the device's only paho importer.

A :class:`Session` is built per connection attempt (paho's own reconnect is
off), so nothing paho keeps in memory outlives a connection.  paho's types stop
here: callbacks run on paho's network thread and only record plain facts and
wake the sender (the CONNACK and whether it grants retain, PUBACKs, the SUBACK
of the command subscription, commands, the end of the connection).

That includes the end paho itself never reports: an exception that kills its
network thread (a MemoryError while reading a huge packet).  The link would
otherwise look "connected" while nothing is read or sent any more; here it
counts as a lost connection, and the sender reconnects.

The CONNACK's wait and verdict, and the plain values an attempt is judged
by (:class:`Dialect`, :class:`ConnectFailure`), are agent/connack.py's,
mixed in and re-exported here: they need no paho.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.addresses import Address, Dial
from agent.brokers import tls_context
from agent.closing import Closing
from agent.config.model import BrokerAddress, MqttConfig
from agent.connack import (
    RETAIN_NOT_SUPPORTED,
    UNSUPPORTED_PROTOCOL,
    ConnackWait,
    ConnectFailure,
    Dialect,
    positive,
)

log = logging.getLogger(__name__)

MAX_PACKET_SIZE = 64 * 1024  # bytes; sent at CONNECT under MQTT 5 (docs/contract.md, commands)
_LOOP_WAIT_MAX_S = 10.0  # paho's network thread, idle: longest select() (a lost wake-up costs at most this)
_LOOP_WAIT_MIN_S = 0.01


class _Client(mqtt.Client):
    """paho's client, told when an exception kills its network thread, and writable from another thread.

    ``loop_start()`` runs ``loop_forever()`` on its thread (paho documents
    this), so the override sees whatever escapes paho's packet handling.

    :attr:`io` is one lock around paho's packet reads and writes (private in
    paho 2.x, overridden here), so a publishing thread may write its packets
    itself (:meth:`writing`): they leave whole and in queue order, and a TLS
    socket is used by one thread at a time.  Re-entrant: callbacks run inside
    a read.
    """

    crashed: Callable[[BaseException], None] | None = None
    dial: Dial  # set by Session before connect()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.io = threading.RLock()  # before paho's __init__: nothing may read or write without it
        self._writer: int | None = None  # the thread inside writing() that holds io: it writes its own packets
        self._wake_w: socket.socket | None = None
        self.tls_alert: str | None = None  # a TLS alert the broker sent after the handshake
        self._sock_recv = self._recv_until_connack  # type: ignore[method-assign]  # until connack_seen()
        super().__init__(*args, **kwargs)

    # paho writes a byte to this socket after queueing a packet, to wake its network thread for the
    # write.  The thread inside writing() writes its packets itself on the way out, so it wakes nobody:
    # the network thread would only compete for the interpreter and then wait for the lock.
    @property
    def _sockpairW(self) -> socket.socket | None:  # noqa: N802 - paho's name
        return None if self._writer == threading.get_ident() else self._wake_w

    @_sockpairW.setter
    def _sockpairW(self, sock: socket.socket | None) -> None:  # noqa: N802 - paho's name
        self._wake_w = sock

    def _create_socket_connection(self) -> socket.socket:
        """TCP by :attr:`dial` (agent/addresses.py): one address after another within one connect timeout.

        A proxy (PySocks installed and configured) goes paho's way.
        """
        if self._get_proxy():
            return super()._create_socket_connection()
        return self.dial.tcp()

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        # paho's, the handshake given what TCP left of the connect timeout; SNI and the host check use the name
        self._connect_timeout = self.dial.phase_timeout_s
        sock = super()._ssl_wrap_socket(tcp_sock)
        self.dial.tls_done()
        return sock

    def _packet_read(self) -> MQTTErrorCode:
        with self.io:
            return super()._packet_read()

    def _recv_until_connack(self, bufsize: int) -> bytes:
        # paho turns a TLS alert into "connection lost" and logs it where nobody looks; under TLS 1.3 a
        # broker rejects the client certificate that way, after the handshake: keep its words.  Only
        # until the CONNACK (``connack_seen``): every read after it is paho's own, at no cost.
        try:
            return super()._sock_recv(bufsize)
        except ssl.SSLError as exc:
            if not isinstance(exc, ssl.SSLWantReadError | ssl.SSLWantWriteError):
                self.tls_alert = str(getattr(exc, "reason", None) or exc)
            raise

    def connack_seen(self) -> None:
        """The CONNACK is in: reads go straight to paho's ``_sock_recv`` again."""
        self.__dict__.pop("_sock_recv", None)

    def _packet_write(self) -> MQTTErrorCode:
        with self.io:
            return super()._packet_write()

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:  # noqa: ARG002 - paho's signature
        # paho's thread waits in select() for at most ``timeout`` (1 s in loop_start) only to check the
        # keepalive; it waits until the keepalive is due instead (news on the socket or a queued packet
        # wakes it as before), so an idle link costs a few wake-ups a minute, not one a second.
        return super()._loop(min(_LOOP_WAIT_MAX_S, self._keepalive_due()))

    def _keepalive_due(self) -> float:
        """Seconds until paho's keepalive check has something to do (a PINGREQ, or a PINGRESP overdue)."""
        if self._keepalive <= 0:
            return _LOOP_WAIT_MAX_S
        with self._msgtime_mutex:
            due = min(self._last_msg_out, self._last_bytes_received) + self._keepalive
        if self._ping_t > 0:
            due = min(due, self._ping_t + self._keepalive)
        return max(_LOOP_WAIT_MIN_S, due - mqtt.time_func())

    def loop_stop(self) -> MQTTErrorCode:
        """paho's, but the thread may wait in select() for seconds: it is woken to see the stop at once."""
        self._thread_terminate = True
        self.nudge()
        return super().loop_stop()

    def loop_forever(self, timeout: float = 1.0, retry_first_connection: bool = False) -> MQTTErrorCode:
        try:
            return super().loop_forever(timeout, retry_first_connection)
        except Exception as exc:  # any exception here ends the link: report it, never lose it
            if self.crashed is not None:
                self.crashed(exc)
            return MQTTErrorCode.MQTT_ERR_UNKNOWN

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the socket while publishing, then write the queued packets on this thread; never waits.

        Held, paho's network thread (woken by each publish) waits for the lock
        instead of racing this thread for the interpreter and the socket.
        When paho's thread holds it (reading or writing), the packets are left
        to it, as without this.  Held, paho's thread is not even woken for
        these packets (it is, if one is left unwritten).  A write that fails
        leaves its packet queued: paho's thread meets the same error and ends
        the connection as usual.
        """
        held = self.io.acquire(blocking=False)
        if held:
            self._writer = threading.get_ident()
        try:
            yield
            if held:
                super()._packet_write()
        finally:
            if held:
                self._writer = None
                if self._out_packet:  # not all written (a full socket, an error): over to paho's thread
                    self.nudge()
                self.io.release()

    def nudge(self) -> None:
        """Wake paho's network thread for the packets still queued, as paho's own queueing does."""
        with contextlib.suppress(OSError):  # BlockingIOError included: a wake-up is pending already
            if self._wake_w is not None:
                self._wake_w.send(b"0")


class Session(ConnackWait, Closing):
    """One connection attempt and, if the broker accepts it, the session that follows.

    Args:
        cfg: the ``mqtt`` section (credentials, TLS, timeouts).
        broker: where to connect.
        dialect: the MQTT version and whether the will is retained.
        addresses: ``broker``'s addresses to try, in order (agent/addresses.py); None resolves it here.
        will: topic and payload of the ``offline``/``lost`` will.
        wake: called on paho's thread whenever something happened.
        on_ack: ``(mid, refusal)`` per PUBACK; ``refusal`` is None on success, else the reason in words.
        on_message: ``(topic, payload, retained)`` per incoming message.

    """

    def __init__(
        self,
        cfg: MqttConfig,
        broker: BrokerAddress,
        dialect: Dialect,
        *,
        will: tuple[str, bytes],
        wake: Callable[[], None],
        on_ack: Callable[[int, str | None], None],
        on_message: Callable[[str, bytes, bool], None],
        addresses: Sequence[Address] | None = None,
    ) -> None:
        self.cfg = cfg
        self.broker = broker
        self.dialect = dialect
        self.connack = threading.Event()  # set on a CONNACK or on the end of the connection
        self.code: int | None = None  # the CONNACK's reason code
        self.code_words = ""
        self.retain_available = True  # MQTT 5 CONNACK property Retain Available
        self.max_packet_size: int | None = None  # MQTT 5 CONNACK property Maximum Packet Size: a bigger one kills us
        self.receive_maximum: int | None = None  # MQTT 5 CONNACK property Receive Maximum: QoS 1 unacked at most
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self.lost_code: int | None = None
        self.sub_mid: int | None = None
        self._subacks: dict[int, str | None] = {}  # mid -> refusal; the SUBACK may beat subscribe()'s return
        self._wake = wake
        self._on_ack = on_ack
        self._on_message = on_message
        self._open = False
        self._closed = False
        self._crashed = False
        v5 = dialect.protocol == "5"
        self.client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        c = self.client
        self.dial = c.dial = Dial(broker, cfg.connect_timeout_s, addresses, tls=cfg.tls is not None)
        c.connect_timeout = cfg.connect_timeout_s  # a proxy's (paho's own path)
        self._max_inflight = cfg.max_inflight + 16
        c.max_inflight_messages_set(self._max_inflight)
        c.max_queued_messages_set(0)
        c.will_set(will[0], will[1], qos=1, retain=dialect.retain)
        if cfg.username is not None:
            c.username_pw_set(cfg.username, cfg.password.reveal() if cfg.password is not None else None)
        if cfg.tls is not None:
            c.tls_set_context(tls_context(cfg))
        c.crashed = self._died
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_publish = self._published
        c.on_subscribe = self._subscribed
        c.on_message = lambda _c, _u, msg: self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain))

    # ---- paho's thread -----------------------------------------------------------

    def _connected(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, props: Any) -> None:
        self.client.connack_seen()
        self.code, self.code_words = int(rc.value), str(rc)
        if props is not None and getattr(props, "RetainAvailable", 1) == 0:
            self.retain_available = False
        self.max_packet_size = positive(getattr(props, "MaximumPacketSize", None))
        self.receive_maximum = positive(getattr(props, "ReceiveMaximum", None))
        self.connack.set()
        self._wake()

    def _disconnected(self, _c: Any, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        # Once per connection; also after a refused CONNACK, where connack is already set.
        self.lost_code = int(rc.value) if getattr(flags, "is_disconnect_packet_from_server", False) else None
        self.lost_reason = str(rc) if self.lost_reason is None else self.lost_reason
        self.lost.set()
        self.connack.set()
        self._wake()

    def _published(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._on_ack(mid, _refusal(rc))
        self._wake()

    def _subscribed(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        self._subacks[mid] = next((str(rc) for rc in rcs if rc.is_failure), None)
        self._wake()

    def _died(self, exc: BaseException) -> None:
        log.error("paho's network thread died (%s: %s); treating the link as lost", type(exc).__name__, exc)
        self._crashed = True
        self.lost_reason = f"network thread died ({type(exc).__name__})"
        self.lost.set()
        self.connack.set()
        self._wake()

    # ---- the sender's thread -----------------------------------------------------

    def open(self) -> ConnectFailure | None:
        """TCP, TLS and CONNECT; None when the CONNECT went out (the CONNACK comes later)."""
        props = None
        if self.dialect.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.MaximumPacketSize = MAX_PACKET_SIZE
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=self.cfg.keepalive_s, properties=props)
        except (OSError, ValueError) as exc:
            return ConnectFailure("connect", self.dial.words(exc))
        self.client.loop_start()
        self._open = True
        return None

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        user: tuple[tuple[str, str], ...] = (),
    ) -> int | None:
        """QoS 1 publish; the mid, or None when the connection is going.

        ``content_type`` and ``user`` properties go out under MQTT 5 only; 3.1.1 has no place for them.
        """
        props = None
        if (content_type or user) and self.dialect.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if content_type:
                props.ContentType = content_type
            if user:
                props.UserProperty = list(user)
        info = self.client.publish(topic, payload, qos=1, retain=retain and self.can_retain, properties=props)
        return int(info.mid) if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Publishes inside go on the wire from this thread on exit, not after paho's network thread wakes."""
        return self.client.writing()

    def limit_inflight(self, n: int) -> None:
        """At most ``n`` QoS 1 publishes unacknowledged (the broker's Receive Maximum); paho queues the rest.

        Called once the CONNACK is in and before this connection's first
        publish: paho's setter refuses an open connection (its worry is a
        change while messages are in flight, and none are), so its field is set.
        """
        self.client._max_inflight_messages = max(1, min(n, self._max_inflight))  # noqa: SLF001 - see above

    def subscribe(self, topic: str) -> bool:
        """Send the QoS 1 subscription; :meth:`suback` tells its answer."""
        rc, mid = self.client.subscribe(topic, qos=1)
        self.sub_mid = mid if rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None
        return self.sub_mid is not None

    def suback(self) -> tuple[bool, str | None]:
        """(answered, refusal in words or None) for the last subscription sent."""
        if self.sub_mid is None or self.sub_mid not in self._subacks:
            return False, None
        return True, self._subacks[self.sub_mid]

    def close(self) -> None:
        """Disconnect (if still connected) and stop paho's thread; idempotent."""
        self._closed = True
        if not self._open:
            return
        self._open = False
        if not self.lost.is_set() or self._crashed:
            self.client.disconnect()  # a dead network thread: paho writes DISCONNECT and closes the socket here
        self.client.loop_stop()

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_id(self) -> str:
        return f"{self.broker} MQTT {self.dialect.protocol}"

    def _repr_state(self) -> str:
        if self.lost.is_set():
            return f"lost ({self.lost_reason})"
        if self.code is not None:
            return "accepted" if self.code < 0x80 else f"refused ({self.code_words})"
        return "connecting" if self._open else "new"


def _refusal(rc: ReasonCode | None) -> str | None:
    """A PUBACK reason >= 0x80 (MQTT 5): the broker did not take the message, whatever paho says."""
    return str(rc) if rc is not None and rc.is_failure else None


# The CONNACK's values live in agent/connack.py; importers of this module keep finding them here.
__all__ = ["MAX_PACKET_SIZE", "RETAIN_NOT_SUPPORTED", "UNSUPPORTED_PROTOCOL", "ConnectFailure", "Dialect", "Session"]
