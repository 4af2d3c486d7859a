"""The monitor's read side (agent/central/reader.py): packets split anywhere, PUBACKs, paho's share, a real broker."""

from __future__ import annotations

import itertools
import json
import queue
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.central import reader
from agent.central.link import CentralLink, Inbox, Incoming, unpack
from agent.central.settings import LinkSettings
from agent.central.wire import Publish
from agent.config.model import BrokerAddress
from tests.central.paho_wire import WireSock, paho_encoded
from tests.support.broker import Broker
from tests.support.waiting import eventually

V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311


class Wired:
    """A real paho client on a fake socket whose reads come from ``chunks``; what it is given, in order."""

    def __init__(self, protocol: MQTTProtocolVersion, **timing: Any) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.sock = WireSock()
        self.client._sock = self.sock  # type: ignore[assignment]
        self.chunks: list[bytes] = []
        self.client._sock_recv = self._recv  # type: ignore[method-assign,assignment]
        self.got: list[tuple[str, Publish]] = []  # ("lean" | "paho", what the monitor would be given)
        self.subacks: list[int] = []
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda _c, _u, mid, _rc, _p: self.subacks.append(mid)
        self.bursts = 0
        assert reader.install(self.client, self._burst, **({"trickle_gap_s": 0} | timing))

    def _burst(self, pubs: list[Publish]) -> None:
        assert pubs
        self.bursts += 1
        self.got.extend(("lean", p) for p in pubs)

    def _recv(self, n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        assert len(chunk) <= n
        return chunk

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        props: Any = getattr(m, "properties", None)
        pairs = tuple(getattr(props, "UserProperty", ()))
        kind = getattr(props, "ContentType", None)
        self.got.append(("paho", Publish(m.topic, bytes(m.payload), m.qos, bool(m.retain), m.mid, kind, pairs)))

    def read(self, data: bytes) -> MQTTErrorCode:
        self.chunks.append(data)
        return self.client.loop_read()


def puback(mid: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", mid)


_PACKET = st.one_of(
    st.tuples(
        st.just("publish"),
        st.integers(0, 1),
        st.booleans(),
        st.binary(max_size=200),
        st.sampled_from([None, "content", "user", "subscription id"]),
    ),
    st.tuples(st.just("pingresp")),
    st.tuples(st.just("suback"), st.integers(1, 65535)),
)


def build(
    protocol: MQTTProtocolVersion, specs: list[tuple[Any, ...]]
) -> tuple[bytes, list[tuple[str, Publish]], bytes]:
    """The stream for ``specs``; what the monitor must be given, and by whom; the PUBACKs it must send."""
    stream, want, acks = bytearray(), [], bytearray()
    for i, spec in enumerate(specs):
        if spec[0] == "pingresp":
            stream += b"\xd0\x00"
            continue
        if spec[0] == "suback":
            rest = struct.pack("!H", spec[1]) + (b"\x00" if protocol == V5 else b"") + b"\x01"
            stream += b"\x90" + bytes([len(rest)]) + rest
            continue
        _, qos, retain, payload, extra = spec
        mid = i + 1 if qos else 0
        want_props = protocol == V5 and extra
        props = Properties(PacketTypes.PUBLISH) if want_props else None  # type: ignore[no-untyped-call]
        kind: str | None = None
        pairs: tuple[tuple[str, str], ...] = ()
        if props is not None and extra == "content":
            props.ContentType = kind = "image/jpeg"
        elif props is not None and extra == "user":
            props.UserProperty = ("event_id", "ab" * 16)
            pairs = (("event_id", "ab" * 16),)
        elif props is not None:
            props.SubscriptionIdentifier = 9  # not the lean decoder's: paho takes this one
        topic = f"campus/main/gate-{i}/status"
        stream += paho_encoded(protocol, topic, payload, qos, retain=retain, mid=mid or 1, props=props)
        who = "paho" if props is not None and extra == "subscription id" else "lean"
        want.append((who, Publish(topic, payload, qos, retain, mid, kind, pairs)))
        if qos:
            acks += puback(mid)
    return bytes(stream), want, bytes(acks)


@settings(max_examples=150, deadline=None)
@given(
    protocol=st.sampled_from([V5, V311]),
    specs=st.lists(_PACKET, min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
)
def test_reader__any_split_gives_each_packet_once_in_order(
    protocol: MQTTProtocolVersion, specs: list[tuple[Any, ...]], cuts: list[int]
) -> None:
    if protocol == V311:
        specs = [s if s[0] != "publish" else (*s[:4], None) for s in specs]
    stream, want, acks = build(protocol, specs)
    w = Wired(protocol)
    edges = [0, *sorted(c for c in cuts if c < len(stream)), len(stream)]
    for a, b in itertools.pairwise(edges):
        if b > a:
            assert w.read(stream[a:b]) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert w.got == want
    assert bytes(w.sock.sent) == acks  # one PUBACK per QoS 1 message, after it was handed over, in order
    assert w.subacks == [s[1] for s in specs if s[0] == "suback"]
    assert not w.sock.closed


def test_reader__many_packets_in_one_read_are_all_taken() -> None:
    stream, want, _ = build(V5, [("publish", 0, True, b"{}", None)] * 500)
    w = Wired(V5)
    assert w.read(stream) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert w.got == want
    assert w.bursts == 1  # one hand-off to the print loop, not 500


def test_reader__a_photo_in_many_reads_then_more_packets() -> None:
    """A few MB at QoS 1 in 64 KB reads (the buffer grows and is trimmed in place), then small packets."""
    photo = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MB
    stream, want, acks = build(
        V5, [("publish", 1, False, photo, "content"), ("pingresp",), ("publish", 1, True, b"{}", None)]
    )
    w = Wired(V5)
    for a in range(0, len(stream), 65536):
        assert w.read(stream[a : a + 65536]) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert w.got == want
    assert bytes(w.sock.sent) == acks


def test_reader__a_reconnect_drops_the_old_streams_remainder() -> None:
    first, _, _ = build(V5, [("publish", 1, False, b"old", None)])
    second, want, acks = build(V5, [("publish", 1, False, b"new", None)])
    w = Wired(V5)
    w.read(first[:-2])
    w.client._sock = new = WireSock()  # type: ignore[assignment]
    assert w.read(second) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert w.got == want
    assert bytes(new.sent) == acks


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.t += seconds


@pytest.mark.parametrize(
    ("per_read", "step_s", "paced"),
    [
        (1, 0.0015, True),  # 20,000 devices at a 30 s heartbeat, one status per wake-up
        (6, 0.005, True),  # statuses only, 1,200 a second: still at most one read per 20 ms
        (500, 0.01, False),  # retained statuses pouring in: never held back
    ],
)
def test_reader__a_trickle_is_paced_a_stream_is_not(per_read: int, step_s: float, *, paced: bool) -> None:
    clock = FakeClock()
    w = Wired(V5, trickle_gap_s=0.02, clock=clock, sleep=clock.sleep)
    stream, want, _ = build(V5, [("publish", 0, False, b"{}", None)] * per_read)
    reads = 100
    for _ in range(reads):
        w.read(stream)
        clock.t += step_s
    assert w.got == want * reads
    if paced:
        assert clock.slept > 0
        assert clock.t - 1000.0 >= (reads - 1) * 0.02  # one read per gap at most
    else:
        assert clock.slept <= 0.1  # at most in the first 100 ms, before the stream was seen


def test_reader__events_are_not_held_back_behind_the_pacing() -> None:
    """After a QoS 1 message (an event) reads are not paced for a second; then pacing is back."""
    clock = FakeClock()
    w = Wired(V5, trickle_gap_s=0.02, clock=clock, sleep=clock.sleep)
    status, _, _ = build(V5, [("publish", 0, False, b"{}", None)])
    event, _, _ = build(V5, [("publish", 1, False, b"{}", None)])
    for data in (status, event, status, status, event, status, status):
        w.read(data)
        clock.t += 0.002
    assert clock.slept == pytest.approx(0.018)  # only the read after the first status waited
    clock.t += reader.EVENT_HOLD_S
    w.read(status)
    w.read(status)
    assert clock.slept == pytest.approx(0.038)  # a second without events: a trickle is paced again


@pytest.mark.parametrize(
    ("why", "data", "rc"),
    [
        ("a remaining length of five bytes", b"\x30\xff\xff\xff\xff\x01", MQTTErrorCode.MQTT_ERR_PROTOCOL),
        ("the broker closed the socket", b"", MQTTErrorCode.MQTT_ERR_CONN_LOST),
    ],
)
def test_reader__a_broken_stream_closes_the_connection(why: str, data: bytes, rc: MQTTErrorCode) -> None:
    w = Wired(V5)
    assert w.read(data) == rc, why
    assert w.sock.closed
    assert w.got == []


def test_reader__a_paho_without_the_private_api_is_left_alone() -> None:
    class Bare:
        loop_read = "untouched"

    bare: Any = Bare()
    assert reader.install(bare, lambda _p: None) is False
    assert bare.loop_read == "untouched"


# ---- against a real broker -------------------------------------------------------------------


def _collect(inbox: Inbox, n: int, timeout: float) -> list[Incoming]:
    got: list[Incoming] = []

    def enough() -> bool:
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return len(got) >= n
            got.extend(m for m in unpack(item) if isinstance(m, Incoming))

    eventually(enough, timeout, f"{n} messages through the monitor's link")
    return got


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_reader__real_broker_qos1_beyond_its_inflight_window(
    broker: Broker, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 QoS 1 events through a broker that holds back all but 100 unacknowledged: every PUBACK went out."""
    paho_calls: list[str] = []
    original: Callable[..., None] = CentralLink._on_message

    def counted(self: CentralLink, *args: Any) -> None:
        paho_calls.append(args[2].topic)
        original(self, *args)

    monkeypatch.setattr(CentralLink, "_on_message", counted)
    inbox: Inbox = queue.SimpleQueue()
    prefix = f"wire{protocol.replace('.', '')}"
    settings_ = LinkSettings((BrokerAddress("127.0.0.1", broker.port),), 10.0, protocol=protocol)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=V5)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        with CentralLink(settings_, inbox) as link:
            link.connect()
            link.subscribe([f"{prefix}/+/+/status", f"{prefix}/+/+/event/#"])
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = "application/json"
            props.UserProperty = ("k", "v")
            infos = [
                pub.publish(
                    f"{prefix}/main/gate-1/event/panic",
                    json.dumps({"n": i}).encode(),
                    qos=1,
                    properties=props,
                )
                for i in range(300)
            ]
            for info in infos:
                info.wait_for_publish(10)
            got = _collect(inbox, 300, 30.0)
    finally:
        pub.disconnect()
        pub.loop_stop()
    assert [json.loads(m.payload)["n"] for m in got] == list(range(300))
    if protocol == "5":
        assert {(m.content_type, m.user_properties) for m in got} == {("application/json", (("k", "v"),))}
    else:
        assert {(m.content_type, m.user_properties) for m in got} == {(None, ())}
    assert not any(m.retained for m in got)
    assert abs(got[-1].arrival - time.time()) < 60
    assert paho_calls == []  # every one came through the lean reader
