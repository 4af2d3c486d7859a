"""A test-side MQTT client: the "central server" that watches what the agent sends."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.waiting import eventually


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    at: float
    props: dict[str, Any] | None = None  # MQTT 5 content type and user properties, when present

    @property
    def doc(self) -> Any:
        return json.loads(self.payload)


class Central:
    """Subscribes, records every message in arrival order, and can publish."""

    def __init__(
        self,
        port: int,
        *,
        topics: tuple[str, ...] = ("campus/#",),
        v5: bool = True,
        host: str = "127.0.0.1",
        **tls: Any,
    ) -> None:
        self.msgs: queue.Queue[Msg] = queue.Queue()
        self.all: list[Msg] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"central-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        if tls:
            self.c.tls_set(**tls)
        self.topics = topics
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(host, port, keepalive=10)
        self.c.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("central subscriber did not get a SUBACK")

    def _on_connect(self, cl: Any, ud: Any, fl: Any, rc: Any, pr: Any) -> None:
        for t in self.topics:
            cl.subscribe(t, qos=1)

    def _on_message(self, cl: Any, ud: Any, m: mqtt.MQTTMessage) -> None:
        props = None
        p = getattr(m, "properties", None)
        if p is not None and (getattr(p, "ContentType", None) or getattr(p, "UserProperty", None)):
            props = {
                "content_type": getattr(p, "ContentType", None),
                "user": dict(getattr(p, "UserProperty", None) or []),
            }
        msg = Msg(m.topic, bytes(m.payload), bool(m.retain), time.monotonic(), props)
        with self._lock:
            self.all.append(msg)
        self.msgs.put(msg)

    def wait_for(self, pred: Callable[[Msg], object], timeout: float = 10.0) -> Msg:
        """The first message (from now on, in arrival order) for which pred(msg) is true."""

        def matching() -> Msg | None:
            while True:  # drain what arrived since the last poll, in order
                try:
                    m = self.msgs.get_nowait()
                except queue.Empty:
                    return None
                if pred(m):
                    return m

        return eventually(matching, timeout, "a matching message")

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            docs = [m.doc for m in self.all if "/event/" in m.topic]
        return [d for d in docs if type_ is None or d["type"] == type_]

    def wait_events(self, n: int, type_: str | None = None, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` distinct event ids (of ``type_``) have arrived."""

        def arrived() -> list[dict[str, Any]] | None:
            got = self.events(type_)
            return got if len({d["id"] for d in got}) >= n else None

        return eventually(
            arrived, timeout, lambda: f"{n} events; only {len({d['id'] for d in self.events(type_)})} arrived"
        )

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def retained(port: int, topic: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """What a brand-new subscriber gets as the retained message on ``topic``."""
    got: queue.Queue[bytes] = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    done = threading.Event()
    c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: done.set()
    c.on_message = lambda cl, ud, m: got.put(bytes(m.payload)) if m.retain else None
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        done.wait(timeout)
        try:
            return json.loads(got.get(timeout=1.0))  # type: ignore[no-any-return]
        except queue.Empty:
            return None
    finally:
        c.disconnect()
        c.loop_stop()
