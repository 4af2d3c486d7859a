"""The central side of the benchmarks: a separate process that subscribes and stamps every arrival.

Prints ``READY`` once subscribed.  Exits when ``--expect`` distinct event ids
on topics containing ``--match`` have arrived (with ``--count-messages``:
``--expect`` messages on those topics, for a peer whose payload has no id), after ``--timeout`` seconds, or
on SIGTERM/SIGINT, and then writes every arrival to ``--out`` as JSON:
``[arrival_monotonic_s, topic, id, mono_ms, seq, state]`` (a payload that is
not a JSON object: its first 32 characters as ``state``).  The arrival time
is ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock the agent stamps
``mono_ms`` with), taken first thing in the message callback; payloads are
parsed only after the run, so the callback costs the same for every sender.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

_ID = b'"id":"'


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", action="append", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--match", default="/event/")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--count-messages", action="store_true", help="count messages, not distinct ids")
    return p.parse_args()


class _Arrivals:
    """Every arrival, stamped first; ``done`` is set once ``expect`` ids (or messages) matched."""

    def __init__(self, match: str, expect: int, *, count_messages: bool) -> None:
        self.rows: list[tuple[float, str, bytes | bytearray]] = []
        self.done = threading.Event()
        self._match = match
        self._expect = expect
        self._ids: set[bytes | bytearray] = set()
        self._counted = 0
        self.on_message = self._count_message if count_messages else self._count_id

    def _count_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        topic = m.topic
        self.rows.append((t, topic, m.payload))
        if self._match in topic:
            self._counted += 1
            if self._expect and self._counted >= self._expect:
                self.done.set()

    def _count_id(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        payload = m.payload
        topic = m.topic
        self.rows.append((t, topic, payload))
        if self._match in topic:
            i = payload.find(_ID)
            if i >= 0:
                self._ids.add(payload[i + 6 : i + 38])
                if self._expect and len(self._ids) >= self._expect:
                    self.done.set()


def main() -> int:
    args = _args()
    seen = _Arrivals(args.match, args.expect, count_messages=args.count_messages)
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
    )

    def on_connect(cl: mqtt.Client, *_a: Any) -> None:
        for t in args.topic:
            cl.subscribe(t, qos=1)

    c.on_connect = on_connect
    subscribed = threading.Event()
    c.on_subscribe = lambda *_a: subscribed.set()
    c.on_message = seen.on_message
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_a: seen.done.set())
    c.connect("127.0.0.1", args.port, keepalive=30)
    c.loop_start()
    ready_at = time.monotonic()
    try:
        if not subscribed.wait(10):
            print("NO SUBACK", flush=True)
            return 1
        print("READY", flush=True)
        timed_out = not seen.done.wait(args.timeout)
    finally:
        c.disconnect()
        c.loop_stop()
    rows = [[t, topic, *_fields(payload)] for t, topic, payload in list(seen.rows)]
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ready_at": ready_at, "timed_out": timed_out, "arrivals": rows}))
    tmp.replace(args.out)
    return 0


def _fields(payload: bytes | bytearray) -> list[Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        return [None, None, None, bytes(payload[:32]).decode(errors="replace")]
    if not isinstance(doc, dict):
        return [None, None, None, bytes(payload[:32]).decode(errors="replace")]
    return [doc.get("id"), doc.get("mono_ms"), doc.get("seq"), doc.get("state")]


if __name__ == "__main__":
    sys.exit(main())
