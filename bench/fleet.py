"""Fleet scale: how the centre's consumers cope with 100 to 20,000 devices on one broker.

For each consumer (``campus-agent monitor``, and the reference consumer in
docs/examples) and each fleet size N, on a fresh mosquitto on loopback:

1. ``bench/fleet_gen.py`` publishes N retained ``online`` statuses (schema
   checked), over a few connections.
2. The consumer starts; from its "subscribed" line to the moment it prints
   the live status of ``fleet-sentinel`` (queued by the broker behind every
   retained status) is the **retained ingest** time.
3. **Steady**: every device's heartbeat at the default 30 s interval; the
   consumer's CPU (utime + stime from /proc) over that window, in % of one core.
4. **Burst**: 500 panic events a second on top of the heartbeats, 1 % of
   them sent twice; **event lag** is publish (generator's wall clock) to the
   line printed (read here, same clock), p50 and p99; **missed** are events
   never printed, **duplicated** are events printed more than once.
5. Peak RSS (VmHWM) of the consumer.

A third consumer, ``paho`` (bench/fleet_paho.py), is a bare paho subscriber
that only prints ids: the floor any Python consumer on paho pays.

Also measured in this process: the monitor's memory per device (tracemalloc
over a :class:`~agent.central.fleet.FleetView` fed N statuses) and the
per-device load a centre's broker carries at defaults.

Results go to bench/results/fleet.json and fleet.md.  ``--quick``: shorter
windows, for ``make bench-fleet QUICK=1`` (under 3 minutes) and the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import pct  # noqa: E402
from bench.fleet_support import (  # noqa: E402
    FleetBroker,
    cpu_seconds,
    load_per_device,
    machine_note,
    memory_per_device,
    peak_rss_mb,
    render_markdown,
    stop,
)

PY = sys.executable
SENTINEL = "fleet-sentinel"
SIZES = (100, 1000, 5000, 20_000)
_MON_EVENT = re.compile(r" id ([0-9a-f]{32})$")
_REF_EVENT = re.compile(r"^PANIC at (\S+) from \S+ at \S+ seq (\d+)$")


@dataclass
class Phases:
    """How long each phase lasts, in seconds."""

    steady_s: float
    burst_s: float
    burst_rate: float = 500.0
    settle_s: float = 10.0


@dataclass
class Reader:
    """Reads a consumer's stdout on a thread; stamps every line with the wall clock as it arrives."""

    proc: subprocess.Popen[bytes]
    kind: str
    lines: int = 0
    seen: Counter[Any] = field(default_factory=Counter)
    first_at: dict[Any, float] = field(default_factory=dict)
    sentinel_at: float | None = None

    def start(self) -> Reader:
        threading.Thread(target=self._run, daemon=True, name="fleet-reader").start()
        return self

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            at = time.time()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines += 1
            key = self._event_key(line)
            if key is not None:
                self.seen[key] += 1
                self.first_at.setdefault(key, at)
            elif self.sentinel_at is None and SENTINEL in line and "online" in line:
                self.sentinel_at = at

    def _event_key(self, line: str) -> Any:
        if self.kind in ("monitor", "paho"):
            m = _MON_EVENT.search(line)
            return m.group(1) if m else None
        m = _REF_EVENT.match(line)
        return (m.group(1), int(m.group(2))) if m else None


def consumer_cmd(kind: str, port: int) -> list[str]:
    if kind == "monitor":
        return [PY, "-m", "agent", "monitor", "--broker", f"127.0.0.1:{port}", "--protocol", "5"]
    if kind == "paho":
        return [PY, str(ROOT / "bench/fleet_paho.py"), str(port)]
    return [
        PY,
        str(ROOT / "docs/examples/reference_consumer.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--client-id",
        f"fleet-bench-{os.getpid()}",
    ]


def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen within {timeout:g} s")
        time.sleep(0.005)


def gen_command(gen: subprocess.Popen[bytes], cmd: str, timeout: float) -> list[str]:
    assert gen.stdin is not None
    assert gen.stdout is not None
    gen.stdin.write(cmd.encode() + b"\n")
    gen.stdin.flush()
    ready, _, _ = select.select([gen.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"fleet_gen did not answer {cmd!r} within {timeout:g} s")
    line = gen.stdout.readline().decode().split()
    if not line or line[0] != "ok":
        raise RuntimeError(f"fleet_gen did not answer {cmd!r}: {line!r}")
    return line[1:]


def start_generator(port: int, n: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """fleet_gen for ``n`` devices, started and ready for commands (it has published nothing yet)."""
    gen = subprocess.Popen(
        [PY, str(ROOT / "bench/fleet_gen.py"), "--port", str(port), "--devices", str(n), "--log", str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert gen.stdout is not None
    ready = gen.stdout.readline().decode().split()
    if not ready or ready[0] != "ready":
        gen.kill()
        raise RuntimeError(f"fleet_gen did not start: {ready!r}")
    return gen


def wait_subscribed(proc: subprocess.Popen[bytes], marker: str, what: str) -> None:
    """Read ``proc``'s stderr up to ``marker``, then keep it drained on a thread so the child never blocks."""
    stderr = proc.stderr
    assert stderr is not None
    for raw in stderr:
        if marker in raw.decode(errors="replace"):
            break
    else:
        raise RuntimeError(f"{what} exited before subscribing (rc {proc.poll()})")
    threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()


def run_one(kind: str, n: int, phases: Phases, workdir: Path) -> dict[str, Any]:
    """One consumer against a fleet of ``n`` devices; every child stopped in ``finally``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    broker = FleetBroker(workdir / f"broker-{kind}-{n}").start()
    children: list[subprocess.Popen[bytes]] = []
    try:
        log = workdir / f"events-{kind}-{n}.jsonl"
        gen = start_generator(broker.port, n, log, env)
        children.append(gen)
        proc = subprocess.Popen(
            consumer_cmd(kind, broker.port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT
        )
        children.append(proc)
        reader = Reader(proc, kind).start()
        wait_subscribed(proc, "monitoring " if kind == "monitor" else "subscribed", kind)
        t0 = time.time()
        gen_command(gen, "sentinel", 60)
        wait_for("the sentinel status", lambda: reader.sentinel_at is not None, 120 + n / 100)
        ingest = (reader.sentinel_at or t0) - t0
        cpu0, w0 = cpu_seconds(proc.pid), time.monotonic()
        beats = int(gen_command(gen, f"steady {phases.steady_s}", phases.steady_s + 60)[0])
        cpu_pct = 100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - w0)
        gen_command(gen, f"burst {phases.burst_rate} {phases.burst_s}", phases.burst_s + 60)
        sent = [json.loads(line) for line in log.read_text().splitlines() if line]
        keys = [s["id"] if kind != "reference" else (s["device"], s["seq"]) for s in sent]
        deadline = time.monotonic() + phases.settle_s
        while time.monotonic() < deadline and any(k not in reader.first_at for k in keys):
            time.sleep(0.05)
        time.sleep(0.5)  # a duplicate printed late would still count
        lags = [
            1000 * (reader.first_at[k] - s["sent"]) for k, s in zip(keys, sent, strict=True) if k in reader.first_at
        ]
        return {
            "consumer": kind,
            "devices": n,
            "ingest_s": round(ingest, 3),
            "steady_cpu_pct": round(cpu_pct, 1),
            "ingest_us_per_status": round(1e6 * ingest / n),
            "cpu_us_per_heartbeat": round(1e4 * cpu_pct / (beats / phases.steady_s)) if beats else None,
            "steady_statuses": beats,
            "rss_mb": peak_rss_mb(proc.pid),
            "events": len(keys),
            "lag_p50_ms": round(pct(lags, 50), 1),
            "lag_p99_ms": round(pct(lags, 99), 1),
            "lag_max_ms": round(max(lags), 1) if lags else None,
            "missed": sum(1 for k in keys if k not in reader.first_at),
            "duplicated": sum(1 for k in keys if reader.seen[k] > 1),
            "broker_dropped": broker.dropped_warnings(),
        }
    finally:
        for child in reversed(children):
            stop(child)
        broker.stop()


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for repeated runs: the median of each figure, the worst of missed, duplicated and dropped."""
    row: dict[str, Any] = dict(runs[0])
    for key, value in runs[0].items():
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if key in ("missed", "duplicated", "broker_dropped"):
            row[key] = max(values)
        elif isinstance(value, (int, float)) and key != "devices" and values:
            row[key] = round(statistics.median(values), 3)
    row["runs"] = runs
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows (make bench-fleet QUICK=1)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="fleet sizes, comma-separated")
    ap.add_argument(
        "--consumers",
        help="comma-separated: monitor, reference (docs/examples), paho (a bare "
        "subscriber: the floor); default all three, with --quick the monitor",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per consumer and size; the report shows medians")
    ap.add_argument("--phases", metavar="STEADY,BURST", help="seconds of each phase (overrides --quick's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/fleet", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    phases = Phases(steady_s=8, burst_s=3) if args.quick else Phases(steady_s=30, burst_s=6)
    if args.phases:
        steady, burst = (float(x) for x in args.phases.split(","))
        phases = Phases(steady_s=steady, burst_s=burst)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        for kind in (args.consumers or ("monitor" if args.quick else "monitor,reference,paho")).split(","):
            for n in sizes:
                runs = []
                for _ in range(args.repeat):
                    runs.append(run_one(kind, n, phases, Path(tmp)))
                    print(json.dumps(runs[-1]), flush=True)
                results.append(median_run(runs))
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "phases": phases.__dict__,
        "machine": machine_note(),
        "repeat": args.repeat,
        "results": results,
        "memory_per_device_bytes": memory_per_device(max(sizes)),
        "load_per_device": load_per_device(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(doc))
    print(render_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
