"""paho's read side for the monitor: many packets per wake-up, and PUBLISH decoded without paho.

A monitor subscribing to 20,000 retained statuses spent its ingest in paho:
one ``select()`` per packet, three or more ``recv`` calls per packet, and
for each MQTT 5 PUBLISH a ``Properties`` object and an ``MQTTMessage``
(measured with ``bench/fleet_profile.py --profile`` on the buffered reader
this replaced: 5.0 of the network thread's 5.3 s under cProfile were paho's
per-packet Python, 2.0 s of it ``Properties``).  :func:`install` replaces
the instance's ``loop_read``:

- one ``recv`` of up to ``chunk`` bytes takes in as many packets as have
  arrived; the loop reads until the socket is empty (or ``_MAX_BURST``
  bytes, so queued PUBACKs and keepalives still get their turn), and a
  packet split across reads waits in the buffer for its rest;
- a QoS 0/1 PUBLISH that :func:`~agent.central.wire.parse_publish` takes
  is collected, and what a wake-up collected goes to ``deliver`` in one
  call (one queue hand-off per burst, so the print loop wakes once per
  burst, not once per message); a QoS 1 one is acknowledged with paho's own
  PUBACK only after its burst was delivered, so an alarm is acknowledged
  only once it is in the monitor's inbox, as paho's handler does (after
  the callback);
- every other packet (CONNACK, SUBACK, PUBACK, PINGRESP, DISCONNECT, QoS 2,
  a topic alias, anything odd) is handed whole to paho's ``_packet_read``
  through the replaced ``_sock_recv``, so paho keeps its own handling;
  what was collected before it is delivered first, so order is kept.

Unless packets arrive as a stream (:data:`STREAM_RATE` a second or more over
the last :data:`_WINDOW_S`, as when the retained statuses pour in at
subscription), a read waits until ``trickle_gap_s`` after the previous one:
20,000 devices at a 30 s heartbeat (667 statuses a second, a few at a time)
wake the reader, and through the one hand-off per burst the print loop,
about 50 times a second rather than several hundred; an event waits at most
that long (20 ms).  For :data:`EVENT_HOLD_S` after a read that brought a
QoS 1 message nothing is held back either: statuses come at QoS 0, events
and replies at QoS 1, so in a burst of events only the first waits.  (Not
pacing only the one read after an event left the events that arrived
during the next status-only read's wait at +10 to 20 ms: p50 18 ms at
5,000 devices under 500 events a second, against 4 ms at 1,000.)  A stream
is never held back: paced, it would be capped at one socket buffer per gap.  Measured
with ``bench/fleet_profile.py --steady``: the rule it replaced (pace after a
wake-up that found fewer than 4 packets) let the heartbeats through unpaced,
about 200 hand-offs a second.

Private paho API (2.x): when a paho release lacks it the client is left as
it is, and paho reads as it always did.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

from agent.central.wire import PUBLISH, Publish, WireError, packet_span, parse_publish

TRICKLE_GAP_S = 0.02
STREAM_RATE = 3000.0
_WINDOW_S = 0.1
EVENT_HOLD_S = 1.0
_CHUNK = 65_536
_MAX_BURST = 1 << 20
_NEEDS = ("_sock_recv", "_packet_read", "_loop_rc_handle", "_send_puback", "_msgtime_mutex", "_protocol")


def install(
    client: mqtt.Client,
    deliver: Callable[[list[Publish]], None],
    *,
    chunk: int = _CHUNK,
    trickle_gap_s: float = TRICKLE_GAP_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Replace ``client``'s read side; False (and nothing changed) when this paho lacks what it needs."""
    if not all(hasattr(client, name) for name in _NEEDS):
        return False
    reader = _Reader(client, deliver, chunk, trickle_gap_s, (clock, sleep))
    client._sock_recv = reader.feed_paho  # type: ignore[method-assign,assignment]  # noqa: SLF001
    client.loop_read = reader.loop_read  # type: ignore[method-assign]
    return True


class _Reader:
    """The buffer between the socket and paho; lives on paho's network thread only."""

    def __init__(
        self,
        client: mqtt.Client,
        deliver: Callable[[list[Publish]], None],
        chunk: int,
        trickle_gap_s: float,
        timing: tuple[Callable[[], float], Callable[[float], None]],
    ) -> None:
        self._client = client
        self._deliver = deliver
        self._raw_recv = client._sock_recv  # noqa: SLF001
        self._chunk = chunk
        self._gap = trickle_gap_s
        self._clock, self._sleep = timing
        self._sock: object = None
        self._buf = bytearray()  # an incomplete packet, grown and trimmed in place
        self._for_paho = b""
        self._burst: list[Publish] = []
        self._acks: list[int] = []
        self._last = 0.0
        self._window_at = 0.0
        self._window_count = 0
        self._streaming = False
        self._urgent = False
        self._unpaced_until = 0.0

    def __repr__(self) -> str:
        return f"<_Reader {len(self._buf)} bytes buffered>"

    def feed_paho(self, n: int) -> bytes:
        """Stand in for paho's ``_sock_recv``: only ever the one whole packet being handed to it."""
        if not self._for_paho:
            raise BlockingIOError
        out, self._for_paho = self._for_paho[:n], self._for_paho[n:]
        return out

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:  # noqa: ARG002 (paho's signature; it ignores it too)
        """Stand in for paho's ``loop_read``: everything the socket has, up to :data:`_MAX_BURST` bytes."""
        client = self._client
        if client._sock is not self._sock:  # noqa: SLF001  # a reconnect: nothing of the old stream may leak in
            self._sock, self._buf, self._burst, self._acks = client._sock, bytearray(), [], []  # noqa: SLF001
        self._pace()
        rc, taken = self._read_all()
        flushed = self._flush()  # one hand-off for the whole wake-up; what came before a failure still counts
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = flushed
        if taken:
            with client._msgtime_mutex:  # noqa: SLF001  # what paho's keepalive looks at
                client._last_bytes_received = mqtt.time_func()  # noqa: SLF001
        if rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return rc
        return client._loop_rc_handle(rc)  # noqa: SLF001

    def _read_all(self) -> tuple[MQTTErrorCode, int]:
        """Read and take packets until the socket is empty: (outcome, bytes read)."""
        taken = 0
        while taken < _MAX_BURST:
            if self._client._sock is None:  # noqa: SLF001
                return MQTTErrorCode.MQTT_ERR_NO_CONN, taken
            try:
                data = self._raw_recv(self._chunk)
            except BlockingIOError:
                break
            except OSError:  # paho's own reading gives up the same way
                return MQTTErrorCode.MQTT_ERR_CONN_LOST, taken
            if not data:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST, taken
            taken += len(data)
            rc = self._packets(data)
            if rc > 0:
                return rc, taken
        return MQTTErrorCode.MQTT_ERR_SUCCESS, taken

    def _pace(self) -> None:
        """Hold a trickle back to one read per gap; never a stream, nor reads for a while after a QoS 1 message."""
        now = self._clock()
        if now - self._window_at >= _WINDOW_S:
            self._streaming = self._window_count >= STREAM_RATE * (now - self._window_at)
            self._window_at, self._window_count = now, 0
        if self._urgent:
            self._unpaced_until, self._urgent = now + EVENT_HOLD_S, False
        if not self._streaming and now >= self._unpaced_until and (wait := self._last + self._gap - now) > 0:
            self._sleep(wait)
        self._last = self._clock()

    def _packets(self, data: bytes) -> MQTTErrorCode:
        """Handle every whole packet in the buffer plus ``data``; keep the incomplete rest."""
        buf: bytes | bytearray = data
        if self._buf:  # in place: a photo arriving in 64 KB reads is never copied whole per read
            buf = self._buf
            buf += data
        pos, rc = 0, MQTTErrorCode.MQTT_ERR_SUCCESS
        v5 = self._client._protocol == MQTTProtocolVersion.MQTTv5  # noqa: SLF001
        try:
            while rc <= 0 and (span := packet_span(buf, pos)) is not None:
                start, end = span
                rc = self._one(buf[pos], buf, pos, start, end, v5=v5)
                pos = end
        except WireError:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        if buf is self._buf:
            del buf[:pos]
        else:
            self._buf = bytearray(buf[pos:])
        return rc

    def _one(self, header: int, buf: bytes | bytearray, pos: int, start: int, end: int, *, v5: bool) -> MQTTErrorCode:
        self._window_count += 1
        pub = parse_publish(header, buf[start:end], v5=v5) if header & 0xF0 == PUBLISH else None
        if pub is not None:
            self._burst.append(pub)
            if pub.qos == 1:
                self._acks.append(pub.mid)
                self._urgent = True
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        rc = self._flush()  # what came before this packet goes first
        if rc > 0:
            return rc
        self._for_paho = bytes(buf[pos:end])
        try:
            return self._client._packet_read()  # noqa: SLF001
        finally:
            self._for_paho = b""

    def _flush(self) -> MQTTErrorCode:
        """Deliver the burst, then acknowledge its QoS 1 messages."""
        if not self._burst:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        burst, acks, self._burst, self._acks = self._burst, self._acks, [], []
        self._deliver(burst)
        for mid in acks:
            rc = self._client._send_puback(mid)  # noqa: SLF001
            if rc > 0:
                return rc
        return MQTTErrorCode.MQTT_ERR_SUCCESS
