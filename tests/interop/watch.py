"""The central side of the interop suite: a plain paho subscriber that speaks what the broker speaks.

tests/support/mqtt.py's ``Central`` is MQTT 5 and anonymous; RabbitMQ and
amqtt speak only 3.1.1 and RabbitMQ wants a user, so the interop suite has its
own small watcher.  It reconnects by itself after a broker outage and counts
SUBACKs, so a test can wait until it listens again before letting the agent
back in.  Its waits are ``eventually`` polls: a timeout fails with AssertionError
naming what was awaited and the last messages seen.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.waiting import eventually


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() on arrival

    @property
    def doc(self) -> Any:
        return json.loads(self.payload)


class Watcher:
    """Subscribes to ``topics`` at QoS 1 and records every message in arrival order."""

    def __init__(
        self,
        port: int,
        topics: tuple[str, ...],
        *,
        v5: bool,
        username: str | None = None,
        password: str | None = None,
        name: str = "central",
        timeout: float = 20.0,
    ) -> None:
        self.port = port
        self.topics = topics
        self.seen: list[Seen] = []
        self.subacks = 0
        self._lock = threading.Lock()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        if username is not None:
            self.c.username_pw_set(username, password)
        # paho annotates the delays as int, but they are seconds and fractions work
        self.c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        self.wait_subscribed(1, timeout)

    def _on_connect(self, cl: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            cl.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        if any(getattr(c, "is_failure", False) for c in codes):
            return  # a refused subscription is not listening; wait_subscribed times out and says so
        with self._lock:
            self.subacks += 1

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append(Seen(m.topic, bytes(m.payload), bool(m.retain), time.monotonic()))

    def wait_subscribed(self, count: int, timeout: float = 30.0) -> None:
        """Wait for the ``count``-th SUBACK since start (1 = first connect, 2 = after one reconnect...)."""
        eventually(
            lambda: self.subacks >= count,
            timeout,
            lambda: f"SUBACK number {count} on port {self.port} (got {self.subacks})",
        )

    def wait_for(self, pred: Callable[[Seen], bool], timeout: float = 20.0, what: str = "a message") -> Seen:
        """The first message recorded so far or later for which ``pred`` holds."""

        def hit() -> Seen | None:
            with self._lock:
                seen = list(self.seen)
            return next((m for m in seen if pred(m)), None)

        return eventually(hit, timeout, lambda: f"{what}; saw {self.summary()}")

    def events(self, type_: str = "panic") -> list[tuple[Seen, dict[str, Any]]]:
        """Event messages of ``type_`` in arrival order, duplicates (same id) kept."""
        with self._lock:
            msgs = [m for m in self.seen if "/event/" in m.topic]
        return [(m, d) for m in msgs if (d := m.doc)["type"] == type_]

    def first_seen(self, type_: str = "panic") -> list[tuple[Seen, dict[str, Any]]]:
        """Events of ``type_`` de-duplicated on id, in first-seen order (what a consumer keeps)."""
        out: dict[str, tuple[Seen, dict[str, Any]]] = {}
        for m, d in self.events(type_):
            out.setdefault(d["id"], (m, d))
        return list(out.values())

    def wait_events(self, n: int, type_: str = "panic", timeout: float = 30.0) -> list[tuple[Seen, dict[str, Any]]]:
        """At least ``n`` distinct events of ``type_``, in first-seen order."""

        def enough() -> list[tuple[Seen, dict[str, Any]]] | None:
            got = self.first_seen(type_)
            return got if len(got) >= n else None

        return eventually(
            enough, timeout, lambda: f"{n} {type_} events ({len(self.first_seen(type_))} arrived); saw {self.summary()}"
        )

    def summary(self) -> str:
        parts = []
        for m in self.seen[-8:]:
            try:
                d = m.doc
                what = f"{d.get('type') or d.get('state')} seq={d.get('seq')}" if isinstance(d, dict) else "?"
            except ValueError:
                what = "not JSON"
            parts.append(f"{m.topic} [{what}{' retained' if m.retain else ''}]")
        return f"{len(self.seen)} messages, last: {parts}"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Watcher 127.0.0.1:{self.port} {self.topics} seen={len(self.seen)}>"


def retained_on(
    port: int, topic: str, *, v5: bool, username: str | None = None, password: str | None = None, timeout: float = 10.0
) -> dict[str, Any] | None:
    """The retained message a brand-new subscriber gets on exactly ``topic`` (None if none)."""
    with Watcher(port, (topic,), v5=v5, username=username, password=password, name="probe", timeout=timeout) as w:
        try:
            # only what the filter matches: amqtt 0.12.1 may hand a new subscriber stray retained messages
            hit = w.wait_for(
                lambda m: m.retain and mqtt.topic_matches_sub(topic, m.topic), timeout=2.0, what="a retained message"
            )
        except AssertionError:  # 2 s is how long the probe listens: nothing retained came
            return None
        doc: dict[str, Any] = hit.doc
        return doc


def connect_result(
    port: int, *, v5: bool, username: str | None = None, password: str | None = None, timeout: float = 10.0
) -> str:
    """How the broker answers a CONNECT: 'accepted', 'refused: <reason>' or 'closed before CONNACK'."""
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"probe-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
    )
    if username is not None:
        c.username_pw_set(username, password)
    answer: list[str] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        answer.append(f"refused: {rc}" if rc.is_failure else "accepted")
        done.set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        if not answer:
            answer.append("closed before CONNACK")
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        return answer[0] if done.wait(timeout) and answer else f"no answer within {timeout:g} s"
    finally:
        c.disconnect()
        c.loop_stop()


def publish(
    port: int,
    topic: str,
    payload: bytes,
    *,
    v5: bool,
    retain: bool = False,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
) -> None:
    """Publish one QoS 1 message as a short-lived client and wait for its PUBACK."""
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    if username is not None:
        c.username_pw_set(username, password)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
