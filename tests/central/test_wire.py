"""The lean PUBLISH decoder (agent/central/wire.py) against paho's own encoder and decoder.

Whatever the decoder takes must come out exactly as paho would have given it
to the monitor (topic, payload, QoS, retained flag, packet id, content type,
user properties); whatever it cannot vouch for it must leave to paho (``None``),
and it must never raise on any bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.central.wire import Publish, WireError, packet_span, parse_publish
from tests.central.paho_wire import paho_encoded, paho_view

V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311
_TEXT = st.text(max_size=12)
_TOPIC = st.text(min_size=1, max_size=40)


@st.composite
def publish_properties(draw: st.DrawFn) -> Properties | None:
    """Any mix of the MQTT 5 PUBLISH properties a broker may forward (topic alias included)."""
    if not draw(st.booleans()):
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if draw(st.booleans()):
        props.ContentType = draw(_TEXT)
    for k, v in draw(st.lists(st.tuples(_TEXT, _TEXT), max_size=3)):
        props.UserProperty = (k, v)
    if draw(st.booleans()):
        props.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        props.ResponseTopic = draw(_TOPIC)
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=8))
    if draw(st.integers(0, 9)) == 0:
        props.TopicAlias = draw(st.integers(1, 10))
    if draw(st.integers(0, 9)) == 0:
        props.SubscriptionIdentifier = draw(st.integers(1, 1000))
    return props


def split(packet: bytes) -> tuple[int, bytes]:
    span = packet_span(packet, 0)
    assert span is not None
    assert span[1] == len(packet)
    return packet[0], packet[span[0] :]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    protocol=st.sampled_from([V5, V311]),
    topic=_TOPIC,
    payload=st.binary(max_size=300),
    qos=st.integers(0, 1),
    retain=st.booleans(),
    dup=st.booleans(),
    mid=st.integers(1, 65535),
    props=publish_properties(),
)
def test_parse_publish__equals_paho(
    protocol: MQTTProtocolVersion,
    topic: str,
    payload: bytes,
    qos: int,
    *,
    retain: bool,
    dup: bool,
    mid: int,
    props: Properties | None,
) -> None:
    packet = paho_encoded(
        protocol, topic, payload, qos, retain=retain, dup=dup, mid=mid, props=props if protocol == V5 else None
    )
    header, body = split(packet)
    ours = parse_publish(header, body, v5=protocol == V5)
    theirs = paho_view(header, body, protocol)
    if theirs is None:  # paho refuses it (a NUL or U+FEFF in a property): so must we, and leave it to paho
        assert ours is None
        return
    odd = ("TopicAlias", "SubscriptionIdentifier")
    if protocol == V5 and props is not None and any(hasattr(props, name) for name in odd):
        assert ours is None  # left to paho, which handles it as it always did
        return
    assert ours == theirs
    assert ours.retain is retain
    assert ours.mid == (mid if qos else 0)


@settings(max_examples=1500)
@given(
    header=st.integers(0x30, 0x3F),
    body=st.binary(max_size=80),
    v5=st.booleans(),
)
def test_parse_publish__any_bytes_never_raise_and_agree_with_paho(header: int, body: bytes, *, v5: bool) -> None:
    ours = parse_publish(header, body, v5=v5)
    if ours is not None:
        assert ours == paho_view(header, body, V5 if v5 else V311)


@given(
    topic=_TOPIC,
    payload=st.binary(max_size=64),
    cut=st.integers(0, 200),
)
def test_parse_publish__truncated_body_is_left_to_paho(topic: str, payload: bytes, cut: int) -> None:
    packet = paho_encoded(V5, topic, payload, 1, retain=False, dup=False, mid=7, props=None)
    header, body = split(packet)
    assume(cut < len(body))
    ours = parse_publish(header, body[:cut], v5=True)
    theirs = paho_view(header, body[:cut], V5)
    assert ours is None or ours == theirs


@pytest.mark.parametrize(
    ("why", "header", "body"),
    [
        ("QoS 2", 0x34, b"\x00\x01t\x00\x05\x00{}"),
        ("empty topic", 0x30, b"\x00\x00\x00{}"),
        ("topic not UTF-8", 0x30, b"\x00\x01\xff\x00{}"),
        ("topic alias", 0x30, b"\x00\x01t\x03\x23\x00\x01{}"),
        ("unknown property", 0x30, b"\x00\x01t\x02\x7f\x00{}"),
        ("repeated content type", 0x30, b"\x00\x01t\x08\x03\x00\x01a\x03\x00\x01b{}"),
        ("property length past the end", 0x30, b"\x00\x01t\x09\x03\x00"),
        ("no property length", 0x30, b"\x00\x01t"),
    ],
)
def test_parse_publish__left_to_paho(why: str, header: int, body: bytes) -> None:
    assert parse_publish(header, body, v5=True) is None, why


def test_parse_publish__mqtt311_payload_starts_after_topic_and_id() -> None:
    body = struct.pack("!H", 5) + b"a/b/c" + b"\x12\x34" + b"\x00{}"
    assert parse_publish(0x33, body, v5=False) == Publish("a/b/c", b"\x00{}", 1, retain=True, mid=0x1234)


@given(length=st.integers(0, 268_435_455), have=st.integers(0, 6))
def test_packet_span__waits_for_the_whole_packet(length: int, have: int) -> None:
    head = bytearray([0x30])
    n = length
    while True:
        n, byte = n >> 7, n & 0x7F
        head.append(byte | (0x80 if n else 0))
        if not n:
            break
    body = b"x" * min(length, have)
    span = packet_span(bytes(head) + body, 0)
    if len(body) == length:
        assert span == (len(head), len(head) + length)
    else:
        assert span is None
    assert packet_span(bytes(head[: len(head) - 1]), 0) is None  # the length itself cut short


def test_packet_span__five_length_bytes_is_not_mqtt() -> None:
    with pytest.raises(WireError, match="longer than four bytes"):
        packet_span(b"\x30\xff\xff\xff\xff\x01", 0)
