"""The baselines: a bare paho-mqtt client doing the least the agent's job needs.

``latency``: every ``--gap-ms``, stamp ``time.monotonic_ns()``, write the payload
to a file in ``--fsync-dir`` and ``fsync`` it (one durable write on the
outbox's disk), then publish it at QoS 1.  The payload carries the stamp as
``mono_ms`` exactly as an agent event does, so the subscriber measures both
the same way.

``drain``: publish a start marker and then ``--count`` prebuilt payloads at QoS
1 through paho's own queue with ``--window`` messages in flight, and wait for
every PUBACK.

The payload template (``--template``) is a real event document with
``__ID__``, ``__MONO__`` and ``__SEQ__`` in place of its id, ``mono_ms`` and
``seq``, so baseline and agent messages have the same size.  Prints one JSON
line with what the publisher saw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def _client(window: int) -> tuple[mqtt.Client, threading.Event, list[int]]:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
    )
    c.max_inflight_messages_set(window)
    c.max_queued_messages_set(0)
    connected = threading.Event()
    acked = [0]

    def on_publish(*_a: Any) -> None:
        acked[0] += 1

    c.on_connect = lambda *_a: connected.set()
    c.on_publish = on_publish
    return c, connected, acked


def _wait_acks(acked: list[int], n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while acked[0] < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return acked[0] >= n


def run_latency(args: argparse.Namespace, template: bytes) -> dict[str, Any]:
    c, connected, acked = _client(args.window)
    c.connect("127.0.0.1", args.port, keepalive=30)
    c.loop_start()
    fsync_us: list[float] = []
    press_ns: list[int] = []
    path = args.fsync_dir / f"rawpub-{os.getpid()}.dat"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if not connected.wait(10):
            return {"error": "no CONNACK"}
        start = time.monotonic() + 0.1
        for i in range(args.count):
            delay = start + i * args.gap_ms / 1000.0 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t_ns = time.monotonic_ns()
            t = t_ns / 1e9
            payload = (
                template.replace(b"__ID__", uuid.uuid4().hex.encode())
                .replace(b"__MONO__", str(int(t * 1000)).encode())
                .replace(b"__SEQ__", str(i + 1).encode())
            )
            os.write(fd, payload)
            os.fsync(fd)
            fsync_us.append((time.monotonic_ns() - t_ns) / 1e3)
            press_ns.append(t_ns)
            c.publish(args.topic, payload, qos=1)
        ok = _wait_acks(acked, args.count, 30)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
        c.disconnect()
        c.loop_stop()
    return {"acked": acked[0], "all_acked": ok, "fsync_us": fsync_us, "press_ns": press_ns}


def run_drain(args: argparse.Namespace, template: bytes) -> dict[str, Any]:
    payloads = [
        template.replace(b"__ID__", uuid.uuid4().hex.encode())
        .replace(b"__MONO__", b"0")
        .replace(b"__SEQ__", str(i + 1).encode())
        for i in range(args.count)
    ]
    c, connected, acked = _client(args.window)
    c.connect("127.0.0.1", args.port, keepalive=30)
    c.loop_start()
    try:
        if not connected.wait(10):
            return {"error": "no CONNACK"}
        t0 = time.monotonic()
        c.publish(args.marker_topic, b'{"state":"online"}', qos=1)
        for p in payloads:
            c.publish(args.topic, p, qos=1)
        ok = _wait_acks(acked, args.count + 1, args.timeout)
        elapsed = time.monotonic() - t0
    finally:
        c.disconnect()
        c.loop_stop()
    # the whole process, as for the agent: start-up, building payloads, paho's thread
    cpu_s = sum(os.times()[:2])
    return {"acked": acked[0], "all_acked": ok, "publisher_elapsed_s": elapsed, "cpu_s": cpu_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=("latency", "drain"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--marker-topic", default="")
    p.add_argument("--template", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--gap-ms", type=float, default=25.0)
    p.add_argument("--fsync-dir", type=Path, default=Path())
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    template = args.template.read_bytes()
    result = run_latency(args, template) if args.mode == "latency" else run_drain(args, template)
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
