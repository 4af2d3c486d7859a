"""paho as the reference for the lean reader's tests: its encoder writes the packets, its decoder reads them."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties

from agent.central.wire import Publish


class WireSock:
    """Stands in for a client's socket: what paho sends is kept, nothing is ever read from it."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1


def paho_encoded(
    protocol: MQTTProtocolVersion,
    topic: str,
    payload: bytes,
    qos: int,
    *,
    retain: bool = False,
    dup: bool = False,
    mid: int = 1,
    props: Properties | None = None,
) -> bytes:
    """The PUBLISH packet paho's own encoder writes (``Client._send_publish``), fixed header included."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    sock = WireSock()
    client._sock = sock  # type: ignore[assignment]
    client._send_publish(mid, topic.encode(), payload, qos, retain, dup, mqtt.MQTTMessageInfo(mid), props)
    return bytes(sock.sent)


def paho_view(header: int, body: bytes, protocol: MQTTProtocolVersion) -> Publish | None:
    """What the monitor got from paho for this packet (the fields its ``_on_message`` reads); ``None`` if paho fails."""
    try:
        got = _packet.decode_publish(header, body, protocol)
        topic = got.topic.decode("utf-8")
    except Exception:  # paho's failure, whatever its kind: the lean decoder must not take it
        return None
    props: Any = got.properties
    kind = getattr(props, "ContentType", None)
    pairs = tuple((str(k), str(v)) for k, v in getattr(props, "UserProperty", ()))
    return Publish(
        topic, bytes(got.payload), got.qos, got.retain, got.mid, kind if isinstance(kind, str) else None, pairs
    )
