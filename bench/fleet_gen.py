"""The fleet load generator's publishing side: N simulated devices over a few MQTT connections.

Run by ``bench/fleet.py`` as a child process, so its work does not share a
GIL with the process that timestamps what the consumer prints.  It first
publishes one retained ``online`` status per device (QoS 1, every PUBACK
awaited), prints ``ready``, then obeys one command per line on stdin and
answers ``ok ...`` on stdout:

- ``sentinel``: a live (not retained) status for device ``fleet-sentinel``;
  the broker queues it behind the retained statuses, so the consumer shows it
  only once it has taken in the whole fleet.
- ``steady SECONDS``: every device's heartbeat (its status every
  ``--interval`` seconds, spread evenly), for that long.
- ``burst RATE SECONDS``: the heartbeats plus ``RATE`` panic events a second
  from random devices; ``--dup`` of them are sent a second time (a
  redelivery).  Each unique event is logged as a JSON line (id, device, seq,
  wall-clock publish time) to ``--log``.
- ``quit``.

Every document is built the way the contract shows it, and a sample is
validated against ``agent/schemas`` before anything is sent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

ROOT = Path(__file__).resolve().parents[1]
SITES = 20
SENTINEL = "fleet-sentinel"
_TICK_S = 0.01


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def device_name(i: int) -> tuple[str, str]:
    """Device ``i``'s (site, device): ``site-07``, ``gate-000123``."""
    return f"site-{i % SITES:02d}", f"gate-{i:06d}"


def status_doc(site: str, device: str, now: float, boot: str) -> dict[str, Any]:
    return {
        "v": 1,
        "site": site,
        "device": device,
        "state": "online",
        "ts": iso(now),
        "clock_synced": True,
        "agent": {"version": "0.1.0", "boot_id": boot, "uptime_s": 3600},
        "link": {"connected_since": iso(now - 3600), "reconnects": 0},
        "outbox": {"pending": 0, "oldest_age_s": None, "dropped": 0},
        "inputs": {},
        "cameras": {},
        "system": {"cpu_temp_c": 48.3, "disk_free_mb": 11873, "load1": 0.12},
        "test_mode_until": None,
    }


def event_doc(site: str, device: str, seq: int, now: float, boot: str) -> dict[str, Any]:
    return {
        "v": 1,
        "id": uuid.uuid4().hex,
        "seq": seq,
        "site": site,
        "device": device,
        "type": "panic",
        "source": "panic",
        "test": False,
        "ts": iso(now),
        "clock_synced": True,
        "boot_id": boot,
        "mono_ms": int(now * 1000) % 10**9,
        "data": {"pin": 17, "contact": "normally_open"},
    }


def validate_sample(prefix: str) -> None:
    """A status and an event as this generator builds them must pass the contract's schemas."""
    schemas = ROOT / "agent" / "schemas"
    boot = uuid.uuid4().hex
    for name, doc in (
        ("status", status_doc("site-00", "gate-000000", time.time(), boot)),
        ("event", event_doc("site-00", "gate-000000", 1, time.time(), boot)),
    ):
        schema = json.loads((schemas / f"{name}.json").read_text())
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    assert prefix


class Fleet:
    """N devices spread over a few connections (device ``i`` on connection ``i % conns``)."""

    def __init__(self, port: int, n: int, conns: int, prefix: str, interval_s: float) -> None:
        self.n, self.prefix, self.interval_s = n, prefix, interval_s
        self.boot = uuid.uuid4().hex
        self.seq = [0] * n
        self.rng = random.Random(7)
        self.clients = [self._client(port, k) for k in range(conns)]
        self.published = 0
        self.bytes = 0

    def _client(self, port: int, k: int) -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleet-gen-{k}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        up = threading.Event()
        c.on_connect = lambda *_a: up.set()
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        if not up.wait(20):
            raise SystemExit(f"fleet_gen: connection {k} got no CONNACK")
        return c

    def publish(self, i: int, topic: str, doc: dict[str, Any], *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        payload = json.dumps(doc, separators=(",", ":")).encode()
        self.published += 1
        self.bytes += len(payload) + len(topic)
        return self.clients[i % len(self.clients)].publish(topic, payload, qos=1, retain=retain)

    def status(self, i: int, *, retain: bool = True) -> mqtt.MQTTMessageInfo:
        site, device = device_name(i)
        return self.publish(
            i, f"{self.prefix}/{site}/{device}/status", status_doc(site, device, time.time(), self.boot), retain=retain
        )

    def retained(self) -> float:
        t0 = time.monotonic()
        infos = [self.status(i) for i in range(self.n)]
        for info in infos:
            info.wait_for_publish(60)
        return time.monotonic() - t0

    def sentinel(self) -> None:
        now = time.time()
        doc = status_doc("site-00", SENTINEL, now, self.boot)
        self.publish(0, f"{self.prefix}/site-00/{SENTINEL}/status", doc).wait_for_publish(30)

    def run(self, seconds: float, rate: float, dup: float, log: Any) -> tuple[int, int]:
        """Heartbeats for ``seconds``, plus ``rate`` events a second; (statuses, events) sent."""
        beat_rate = self.n / self.interval_s
        t0 = time.monotonic()
        beats = events = 0
        next_beat = self.rng.randrange(self.n) if self.n else 0
        while (elapsed := time.monotonic() - t0) < seconds:
            for _ in range(int(elapsed * beat_rate) - beats):
                self.status(next_beat % self.n)
                next_beat += 1
                beats += 1
            for _ in range(int(elapsed * rate) - events):
                events += 1
                self._event(dup, log)
            time.sleep(_TICK_S)
        return beats, events

    def _event(self, dup: float, log: Any) -> None:
        i = self.rng.randrange(self.n)
        site, device = device_name(i)
        self.seq[i] += 1
        doc = event_doc(site, device, self.seq[i], time.time(), self.boot)
        topic = f"{self.prefix}/{site}/{device}/event/panic"
        sent = time.time()
        self.publish(i, topic, doc)
        log.write(json.dumps({"id": doc["id"], "device": f"{site}/{device}", "seq": doc["seq"], "sent": sent}) + "\n")
        if self.rng.random() < dup:
            self.publish(i, topic, doc)  # the same event again, as after a lost PUBACK

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--interval", type=float, default=30.0, help="heartbeat interval (s); the agent's default")
    ap.add_argument("--dup", type=float, default=0.01, help="share of events sent twice")
    ap.add_argument("--prefix", default="campus")
    ap.add_argument("--log", type=Path, required=True)
    args = ap.parse_args(argv)
    validate_sample(args.prefix)
    fleet = Fleet(args.port, args.devices, args.conns, args.prefix, args.interval)
    took = fleet.retained()
    print(f"ready {took:.3f} {fleet.bytes / max(1, fleet.published):.1f}", flush=True)
    with args.log.open("w") as log:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            if cmd[0] == "sentinel":
                fleet.sentinel()
                print("ok", flush=True)
            elif cmd[0] == "steady":
                beats, _ = fleet.run(float(cmd[1]), 0.0, 0.0, log)
                print(f"ok {beats} 0", flush=True)
            elif cmd[0] == "burst":
                beats, events = fleet.run(float(cmd[2]), float(cmd[1]), args.dup, log)
                log.flush()
                print(f"ok {beats} {events}", flush=True)
    fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
