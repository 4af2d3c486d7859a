"""The photo drain rule, and photo messages through a real mosquitto (MQTT 5 properties, ACL refusal)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from agent.outbox import Outbox
from agent.photosend import STRIKES, PhotoDrain, PhotoMessage, packet_size, photo_message
from agent.photostore import Photo, PhotoStore
from tests.support.broker import Broker
from tests.support.snapcam import make_jpeg
from tests.support.waiting import eventually

ROOT = "campus/main/gate-1"


def photo(event: str, camera: str = "gate-cam", part: int = 1, parts: int = 1) -> Photo:
    return Photo(event, camera, make_jpeg(5000, hash(event) & 0xFF), taken=1_799_971_200.5, part=part, parts=parts)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PhotoStore]:
    with PhotoStore(tmp_path / "photos.db") as s:
        yield s


class Failures(list[tuple[str, str, str, str]]):
    def __call__(self, *args: str) -> None:
        self.append(args)  # type: ignore[arg-type]


def test_photo_message__topic_properties_and_flags() -> None:
    msg = photo_message(ROOT, photo("e1", "yard", 2, 3))
    assert msg == PhotoMessage(
        topic=f"{ROOT}/snapshot/e1",
        payload=photo("e1").jpeg,
        content_type="image/jpeg",
        user_properties=(
            ("event_id", "e1"),
            ("camera", "yard"),
            ("part", "2/3"),
            ("taken", "2027-01-15T00:00:00.500Z"),
        ),
        qos=1,
        retain=False,
    )


def test_photo_drain__waits_for_events_and_keeps_one_in_flight(store: PhotoStore) -> None:
    failures = Failures()
    drain = PhotoDrain(store, ROOT, on_failed=failures)
    assert drain.take(events_idle=True) is None  # nothing stored
    store.put(photo("e1"))
    store.put(photo("e2"))
    assert drain.take(events_idle=False) is None, "an event waiting goes first"
    first = drain.take(events_idle=True)
    assert first is not None
    assert first.topic.endswith("/e1")
    drain.sent(7, first)
    assert drain.busy
    assert drain.take(events_idle=True) is None, "one photo in flight at most"
    assert drain.settle(8) is False, "another publish's PUBACK"
    assert drain.settle(7) is True
    assert [p.event_id for p in store.pending()] == ["e2"]
    nxt = drain.take(events_idle=True)
    assert nxt is not None
    assert nxt.topic.endswith("/e2")
    assert failures == []
    assert "sent=1" in repr(drain)


def test_photo_drain__reconnect_sends_the_photo_again(store: PhotoStore) -> None:
    drain = PhotoDrain(store, ROOT, on_failed=Failures())
    store.put(photo("e1"))
    msg = drain.take(events_idle=True)
    assert msg is not None
    drain.sent(1, msg)
    drain.reset()  # the connection dropped before the PUBACK
    assert drain.settle(1) is False, "an old connection's mid matches nothing"
    again = drain.take(events_idle=True)
    assert again == msg


def test_photo_drain__refused_photo_is_dropped_and_reported(store: PhotoStore) -> None:
    failures = Failures()
    drain = PhotoDrain(store, ROOT, on_failed=failures)
    store.put(photo("e1", "a-cam", 1, 2))
    store.put(photo("e1", "b-cam", 2, 2))
    msg = drain.take(events_idle=True)
    assert msg is not None
    drain.sent(3, msg)
    assert drain.settle(3, refused=True)
    assert failures == [
        ("e1", "a-cam", "refused", f"broker refused {ROOT}/snapshot/e1; check its ACL for {ROOT}/snapshot/#")
    ]
    assert [(p.event_id, p.camera) for p in store.pending()] == [("e1", "b-cam")], "only that camera's photo"


def test_photo_drain__a_photo_over_the_brokers_packet_limit_is_dropped_and_the_next_one_goes(
    store: PhotoStore,
) -> None:
    failures = Failures()
    drain = PhotoDrain(store, ROOT, on_failed=failures)
    big = Photo("e1", "gate-cam", make_jpeg(70_000, 1), taken=1_799_971_200.5)
    store.put(big)
    store.put(photo("e2"))
    small = photo_message(ROOT, photo("e2"))
    drain.limit = packet_size(small)  # exactly the small one's size fits
    assert drain.take(events_idle=True) == small
    assert [f[:3] for f in failures] == [("e1", "gate-cam", "too_large")]
    assert f"over the broker's maximum packet size ({drain.limit})" in failures[0][3]
    assert [p.event_id for p in store.pending()] == ["e2"]


def test_photo_drain__packet_size_is_never_below_what_paho_sends() -> None:
    msg = photo_message(ROOT, photo("e1", "yard", 2, 3))
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = msg.content_type
    props.UserProperty = list(msg.user_properties)
    remaining = 2 + len(msg.topic.encode()) + 2 + len(props.pack()) + len(msg.payload)  # type: ignore[no-untyped-call]
    on_wire = 1 + len(VariableByteIntegers.encode(remaining)) + remaining  # type: ignore[no-untyped-call]
    assert on_wire <= packet_size(msg) <= on_wire + 16


def test_photo_drain__a_photo_in_flight_when_connections_keep_ending_is_dropped(store: PhotoStore) -> None:
    failures = Failures()
    drain = PhotoDrain(store, ROOT, on_failed=failures)
    store.put(photo("e1"))
    store.put(photo("e2"))
    for n in range(1, STRIKES + 1):
        msg = drain.take(events_idle=True)
        assert msg is not None
        assert msg.topic.endswith("/e1"), f"connection {n}: the same photo again"
        drain.sent(n, msg)
        drain.reset()  # a 3.1.1 broker closes the connection at a packet over its limit
    assert [f[:3] for f in failures] == [("e1", "gate-cam", "refused")]
    assert "max_packet_size" in failures[0][3]
    assert [p.event_id for p in store.pending()] == ["e2"]


def test_photo_drain__a_delivered_photo_clears_the_count(store: PhotoStore) -> None:
    drain = PhotoDrain(store, ROOT, on_failed=Failures())
    store.put(photo("e1"))
    for mid in range(1, STRIKES):
        msg = drain.take(events_idle=True)
        assert msg is not None
        drain.sent(mid, msg)
        drain.reset()  # ordinary outages while it travelled
    msg = drain.take(events_idle=True)
    assert msg is not None
    drain.sent(9, msg)
    assert drain.settle(9)
    store.put(photo("e1"))  # the same event's photo once more: a fresh count
    msg = drain.take(events_idle=True)
    assert msg is not None
    drain.sent(10, msg)
    drain.reset()
    assert store.pending(), "one outage is not a refusal"


# ---- through a real broker -------------------------------------------------------------------------


class Sender:
    """What uplink.py will do with a PhotoMessage: paho Properties, QoS 1, and the PUBACK's reason code."""

    def __init__(self, port: int) -> None:
        self.acks: dict[int, int] = {}
        self.lock = threading.Lock()  # paho's thread writes, the test reads
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"gate-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self.lock:
            self.acks[mid] = int(rc.value)

    def publish(self, msg: PhotoMessage) -> int:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = msg.content_type
        props.UserProperty = list(msg.user_properties)
        return int(self.c.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=props).mid)

    def wait_ack(self, mid: int) -> int:
        eventually(lambda: mid in self.acks, what=f"the PUBACK of message {mid}")
        with self.lock:
            return self.acks[mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Receiver:
    def __init__(self, port: int, topic: str) -> None:
        self.got: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()  # paho's thread writes, the test reads
        subscribed = threading.Event()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"central-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.c.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append(m)

    def wait(self, n: int) -> list[mqtt.MQTTMessage]:
        eventually(lambda: len(self.got) >= n, what=lambda: f"{n} messages; {len(self.got)} arrived")
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.broker
def test_photo_drain__through_mosquitto_with_mqtt5_properties(broker: Broker, store: PhotoStore) -> None:
    root = f"campus/main/{uuid.uuid4().hex[:10]}"
    rx = Receiver(broker.port, f"{root}/snapshot/#")
    tx = Sender(broker.port)
    try:
        drain = PhotoDrain(store, root, on_failed=Failures())
        store.put(Photo("e1", "gate-cam", make_jpeg(200_000), taken=1_799_971_200.0))
        msg = drain.take(events_idle=True)
        assert msg is not None
        mid = tx.publish(msg)
        drain.sent(mid, msg)
        assert tx.wait_ack(mid) == 0
        assert drain.settle(mid)
        [m] = rx.wait(1)
        assert m.topic == f"{root}/snapshot/e1"
        assert m.payload == make_jpeg(200_000)
        assert (m.qos, m.retain) == (1, False)
        props: Any = m.properties  # paho sets the MQTT 5 properties as dynamic attributes
        assert props.ContentType == "image/jpeg"
        assert dict(props.UserProperty) == {
            "event_id": "e1",
            "camera": "gate-cam",
            "part": "1/1",
            "taken": "2027-01-15T00:00:00.000Z",
        }
        assert store.pending() == []
    finally:
        tx.close()
        rx.close()


@pytest.mark.broker
def test_photo_drain__broker_acl_refusal_drops_the_photo(tmp_path: Path, store: PhotoStore) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic write campus/main/+/event/#\ntopic read campus/#\n")
    b = Broker(tmp_path / "broker", listener_extra=f"allow_anonymous true\nacl_file {acl}\n").start()
    tx = Sender(b.port)
    try:
        failures = Failures()
        drain = PhotoDrain(store, ROOT, on_failed=failures)
        store.put(photo("e1"))
        store.put(photo("e2"))
        msg = drain.take(events_idle=True)
        assert msg is not None
        mid = tx.publish(msg)
        drain.sent(mid, msg)
        reason = tx.wait_ack(mid)
        assert reason >= 0x80, "mosquitto refuses the publish in its PUBACK (MQTT 5)"
        drain.settle(mid, refused=reason >= 0x80)
        assert [f[2] for f in failures] == ["refused"]
        nxt = drain.take(events_idle=True)
        assert nxt is not None
        assert nxt.topic.endswith("/e2"), "the next photo is not stuck behind the refused one"
    finally:
        tx.close()
        b.stop()


# ---- the rule composed with a real outbox: what the sender will do -------------------------------------


class SenderModel:
    """The sender's round as uplink.py will run it: events from the outbox first, then at most one photo."""

    def __init__(self, outbox: Outbox, drain: PhotoDrain) -> None:
        self.outbox = outbox
        self.drain = drain
        self.inflight_events: dict[int, int] = {}  # mid -> seq
        self.wire: list[str] = []
        self.mid = 0

    def round(self) -> None:
        sent = set(self.inflight_events.values())
        for row in self.outbox.next_batch(0, 100):
            if row.seq not in sent:
                self.mid += 1
                self.inflight_events[self.mid] = row.seq
                self.wire.append(f"event:{row.type}:{row.id}")
        idle = not self.inflight_events and self.outbox.pending() == 0
        msg = self.drain.take(events_idle=idle)
        if msg is not None:
            self.mid += 1
            self.drain.sent(self.mid, msg)
            self.wire.append(f"photo:{dict(msg.user_properties)['event_id']}")

    def ack_all(self) -> None:
        for mid, seq in list(self.inflight_events.items()):
            self.outbox.ack([seq])
            del self.inflight_events[mid]
        if self.drain.busy:
            assert self.drain._inflight is not None
            self.drain.settle(self.drain._inflight[0])


def test_photo_drain__alarm_first_and_a_new_alarm_overtakes_pending_photos(outbox: Outbox, store: PhotoStore) -> None:
    from agent.events import Clock, Event, EventType

    clock = Clock(boot_id="b" * 32)
    model = SenderModel(outbox, PhotoDrain(store, ROOT, on_failed=Failures()))
    first = Event.create(clock, EventType.PANIC, "panic")
    outbox.put(first)
    store.put(photo(first.id, "a-cam", 1, 2))  # both photos are ready at once (a fast camera)
    store.put(photo(first.id, "b-cam", 2, 2))
    model.round()
    assert model.wire == [f"event:panic:{first.id}"], "the alarm goes first, no photo with it"
    model.ack_all()
    model.round()
    assert model.wire[-1] == f"photo:{first.id}"
    second = Event.create(clock, EventType.PANIC, "panic")
    outbox.put(second)  # a new alarm while the second photo still waits
    model.ack_all()
    model.round()
    assert model.wire[-1] == f"event:panic:{second.id}", "the new alarm overtakes the waiting photo"
    model.ack_all()
    model.round()
    assert model.wire[-1] == f"photo:{first.id}"
    model.ack_all()
    model.round()
    assert store.pending() == []
    assert [w.split(":")[0] for w in model.wire] == ["event", "photo", "event", "photo"]
