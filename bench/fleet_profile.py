"""Where the monitor spends a retained status: ingest of N statuses from a scripted broker, timed or profiled.

``bench/fleet.py`` measures the monitor from outside against mosquitto and a
load generator; on a shared machine those figures move with the load.  This
driver takes both out: a minimal MQTT server on loopback (this file) answers
CONNECT and SUBSCRIBE, then writes N retained ``online`` statuses and one live
status of ``fleet-sentinel`` as fast as the socket takes them.  The monitor's
own :class:`~agent.central.link.CentralLink` and print loop take them in, in
this process; the figure is the time from the SUBACK to the sentinel's status
in the fleet view.

- ``--profile``: cProfile over both threads (paho's network thread and the
  print loop), the top functions of each by own time.
- ``--ab DIR``: interleaved A/B: runs alternate between this tree's ``agent``
  and the one under ``DIR`` (e.g. ``git archive HEAD~3 agent | tar -x -C
  /tmp/old``), each in a fresh interpreter, so load on a shared machine hits
  both alike; prints the median of each and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SENTINEL = "fleet-sentinel"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, *, v5: bool, retain: bool) -> bytes:
    """A QoS 0 PUBLISH as a broker sends it (MQTT 5: an empty property block)."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (b"\x00" if v5 else b"") + payload
    return bytes([0x30 | int(retain)]) + _varint(len(body)) + body


def fleet_stream(n: int, *, v5: bool) -> bytes:
    """N retained statuses as ``bench/fleet_gen.py`` builds them, then the sentinel's live one."""
    sys.path.insert(0, str(ROOT))
    from bench.fleet_gen import device_name, status_doc  # noqa: PLC0415 (after the path is set)

    now, boot = time.time(), "b" * 32
    parts = []
    for i in range(n):
        site, device = device_name(i)
        doc = json.dumps(status_doc(site, device, now, boot), separators=(",", ":")).encode()
        parts.append(publish_packet(f"campus/{site}/{device}/status", doc, v5=v5, retain=True))
    doc = json.dumps(status_doc("site-00", SENTINEL, now, boot), separators=(",", ":")).encode()
    parts.append(publish_packet(f"campus/site-00/{SENTINEL}/status", doc, v5=v5, retain=False))
    return b"".join(parts)


class ScriptedBroker:
    """Answers one client's CONNECT and SUBSCRIBE, sends the fleet's retained statuses, then heartbeats.

    Heartbeats: every device's status once per ``interval_s`` (spread evenly,
    sent in 10 ms ticks, one ``send`` per packet as a broker writes them), for
    ``steady_s`` seconds after the retained stream.  PINGREQ gets PINGRESP.
    """

    def __init__(self, n: int, *, steady_s: float = 0.0, interval_s: float = 30.0) -> None:
        self.n, self.steady_s, self.interval_s = n, steady_s, interval_s
        self.streams = {v5: fleet_stream(n, v5=v5) for v5 in (True, False)}  # built before the clock starts
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]

    def serve(self) -> None:
        conn, _ = self.server.accept()
        self.server.close()  # one connection only: a later connect (the monitor's 3.1.1 cleanup) is refused at once
        v5 = True
        with conn:
            while True:
                head = conn.recv(1)
                if not head:
                    return
                length, mult = 0, 1
                while True:
                    b = conn.recv(1)[0]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                body = b""
                while len(body) < length:
                    body += conn.recv(length - len(body))
                kind = head[0] & 0xF0
                if kind == 0x10:  # CONNECT: protocol level at byte 6 (after "\x00\x04MQTT")
                    v5 = body[6] == 5
                    conn.sendall(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")
                elif kind == 0x80:
                    conn.sendall(self._suback(body, v5=v5))
                    conn.sendall(self.streams[v5])
                    threading.Thread(target=self._heartbeats, args=(conn, v5), daemon=True).start()
                elif kind == 0xC0:
                    conn.sendall(b"\xd0\x00")
                elif kind == 0xE0:
                    return

    def _heartbeats(self, conn: socket.socket, v5: bool) -> None:
        from bench.fleet_gen import device_name, status_doc  # noqa: PLC0415

        rate, t0, sent, boot = self.n / self.interval_s, time.monotonic(), 0, "b" * 32
        with contextlib.suppress(OSError):
            while (elapsed := time.monotonic() - t0) < self.steady_s:
                for _ in range(int(elapsed * rate) - sent):
                    site, device = device_name(sent % self.n)
                    doc = json.dumps(status_doc(site, device, time.time(), boot), separators=(",", ":")).encode()
                    conn.sendall(publish_packet(f"campus/{site}/{device}/status", doc, v5=v5, retain=False))
                    sent += 1
                time.sleep(0.01)

    @staticmethod
    def _suback(body: bytes, *, v5: bool) -> bytes:
        mid, pos = body[:2], 2
        if v5:
            plen, shift = 0, 0
            while True:
                b = body[pos]
                pos += 1
                plen |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            pos += plen
        codes = bytearray()
        while pos < len(body):
            (tlen,) = struct.unpack_from("!H", body, pos)
            pos += 2 + tlen
            codes.append(body[pos] & 0x03)
            pos += 1
        rest = mid + (b"\x00" if v5 else b"") + bytes(codes)
        return b"\x90" + _varint(len(rest)) + rest


def _switches() -> int:
    """Voluntary context switches of every thread of this process: how often it went to sleep."""
    total = 0
    for status in Path("/proc/self/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def _profiled_paho(profiles: list[cProfile.Profile]) -> None:
    import paho.mqtt.client as mqtt  # noqa: PLC0415

    original = mqtt.Client._thread_main

    def profiled(self: Any) -> None:
        p = cProfile.Profile()
        profiles.append(p)
        p.enable()
        try:
            original(self)
        finally:
            p.disable()

    mqtt.Client._thread_main = profiled  # type: ignore[method-assign]


def run_once(n: int, protocol: str, steady_s: float, *, profile: bool) -> dict[str, Any]:
    """Ingest ``n`` statuses, then ``steady_s`` seconds of heartbeats, through the monitor's link and print loop."""
    import queue  # noqa: PLC0415

    from agent.central import session as monitor_session  # noqa: PLC0415
    from agent.central.link import CentralLink  # noqa: PLC0415
    from agent.central.settings import LinkSettings  # noqa: PLC0415
    from agent.config.model import BrokerAddress  # noqa: PLC0415

    profiles: list[cProfile.Profile] = []
    if profile:
        _profiled_paho(profiles)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--devices", str(n), "--steady", str(steady_s + 5)],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        inbox: Any = queue.SimpleQueue()
        settings = LinkSettings((BrokerAddress("127.0.0.1", port),), 10.0, protocol=protocol)
        opts = monitor_session.MonitorOptions(table_every_s=0, duration_s=steady_s)
        main = cProfile.Profile()
        with CentralLink(settings, inbox) as link:
            link.connect()
            sess = monitor_session._Session(link, inbox, "campus", opts, io.StringIO(), wall=time.time)
            cpu0 = time.process_time()
            if profile:
                main.enable()
            link.subscribe(["campus/+/+/status", "campus/+/+/event/#"])
            t0 = time.perf_counter()
            deadline = time.monotonic() + 120
            while len(sess.fleet) < n + 1 and time.monotonic() < deadline:
                sess._drain(0.05)
            took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            main.disable()
            steady: dict[str, Any] = {}
            if steady_s > 0:
                cpu1, w1, s1 = time.process_time(), time.monotonic(), _switches()
                sess.run(threading.Event(), queue.SimpleQueue())
                wall = time.monotonic() - w1
                steady = {
                    "steady_cpu_pct": round(100 * (time.process_time() - cpu1) / wall, 2),
                    "wakeups_per_s": round((_switches() - s1) / wall),
                }
    finally:
        child.kill()
        child.wait()
    out = {"devices": n, "ingest_s": round(took, 3), "cpu_s": round(cpu, 3), "seen": len(sess.fleet), **steady}
    if profile:
        for name, p in (("paho thread", profiles[0] if profiles else None), ("print loop", main)):
            if p is not None:
                text = io.StringIO()
                pstats.Stats(p, stream=text).sort_stats("tottime").print_stats(22)
                print(f"==== {name}\n{text.getvalue()}", file=sys.stderr)
    return out


def ab(n: int, protocol: str, other: Path, rounds: int, steady_s: float) -> dict[str, Any]:
    """Alternate runs of this tree and ``other``; the median of each figure, and new/old."""
    runs: dict[str, list[dict[str, Any]]] = {"new": [], "old": []}
    for r in range(rounds):
        order = (("new", ROOT), ("old", other)) if r % 2 == 0 else (("old", other), ("new", ROOT))
        for name, tree in order:
            cmd = [sys.executable, __file__, "--devices", str(n), "--protocol", protocol, "--tree", str(tree)]
            res = subprocess.run([*cmd, "--steady", str(steady_s)], capture_output=True, text=True, check=True)
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    out: dict[str, Any] = {"devices": n, "rounds": rounds}
    for key in ("cpu_s", "ingest_s", "steady_cpu_pct", "wakeups_per_s"):
        if key in runs["new"][0]:
            new = statistics.median(r[key] for r in runs["new"])
            old = statistics.median(r[key] for r in runs["old"])
            out[key] = {"new": new, "old": old, "new/old": round(new / old, 3) if old else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    ap.add_argument("--steady", type=float, default=0.0, metavar="SECONDS", help="then heartbeats for this long")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ab", type=Path, metavar="DIR", help="another tree holding agent/, to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        broker = ScriptedBroker(args.devices, steady_s=args.steady)
        print(broker.port, flush=True)
        broker.serve()
        return 0
    if args.ab is not None:
        print(json.dumps(ab(args.devices, args.protocol, args.ab.resolve(), args.rounds, args.steady)))
        return 0
    sys.path.insert(0, str(args.tree or ROOT))
    print(json.dumps(run_once(args.devices, args.protocol, args.steady, profile=args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
