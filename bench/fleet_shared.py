"""Scale-out: K reference consumers sharing one fleet's event stream (MQTT 5 shared subscription).

For docs/central.md, "Shared subscriptions".  On a fresh mosquitto (the fleet
bench's settings) with N devices, K reference consumers
(docs/examples/reference_consumer.py) join one group (``--group``): each
takes every status (unshared) and a share of the events.  Measured as in
``bench/fleet.py``: retained ingest (to the sentinel's status, per consumer),
steady CPU per consumer, then a burst of events: how many each consumer
printed, lag publish → printed over the group, and events missed (printed by
none) or shown twice (by any two, or one twice).

Results go to bench/results/fleet-shared.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import pct  # noqa: E402
from bench.fleet import PY, Phases, Reader, gen_command, start_generator, wait_for, wait_subscribed  # noqa: E402
from bench.fleet_support import FleetBroker, cpu_seconds, machine_note, peak_rss_mb, stop  # noqa: E402


def _consumer(port: int, group: str, k: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [PY, str(ROOT / "docs/examples/reference_consumer.py"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--client-id", f"fleet-shared-{os.getpid()}-{k}", "--group", group]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)


def run_group(n: int, k: int, phases: Phases, workdir: Path) -> dict[str, Any]:
    """K consumers in one group against N devices; every child stopped in ``finally``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    broker = FleetBroker(workdir / f"broker-shared-{n}-{k}").start()
    children: list[subprocess.Popen[bytes]] = []
    try:
        log = workdir / f"events-shared-{n}-{k}.jsonl"
        gen = start_generator(broker.port, n, log, env)
        children.append(gen)
        procs = [_consumer(broker.port, "central", i, env) for i in range(k)]
        children += procs
        readers = [Reader(p, "reference").start() for p in procs]
        for p in procs:
            wait_subscribed(p, "subscribed", "a consumer")
        t0 = time.time()
        gen_command(gen, "sentinel", 60)
        for r in readers:
            wait_for("the sentinel status", lambda r=r: r.sentinel_at is not None, 120 + n / 100)
        ingest = [(r.sentinel_at or t0) - t0 for r in readers]
        cpu0, w0 = [cpu_seconds(p.pid) for p in procs], time.monotonic()
        gen_command(gen, f"steady {phases.steady_s}", phases.steady_s + 60)
        wall = time.monotonic() - w0
        cpu = [100 * (cpu_seconds(p.pid) - c) / wall for p, c in zip(procs, cpu0, strict=True)]
        gen_command(gen, f"burst {phases.burst_rate} {phases.burst_s}", phases.burst_s + 60)
        sent = [json.loads(line) for line in log.read_text().splitlines() if line]
        keys = [(s["device"], s["seq"]) for s in sent]
        deadline = time.monotonic() + phases.settle_s
        while time.monotonic() < deadline and any(all(key not in r.first_at for r in readers) for key in keys):
            time.sleep(0.05)
        time.sleep(0.5)
        first = {key: min(r.first_at[key] for r in readers if key in r.first_at) for key in keys}
        lags = [1000 * (first[key] - s["sent"]) for key, s in zip(keys, sent, strict=True) if key in first]
        shown = [sum(r.seen[key] for r in readers) for key in keys]
        return {
            "devices": n,
            "consumers": k,
            "ingest_s_max": round(max(ingest), 3),
            "steady_cpu_pct_each": [round(c, 1) for c in cpu],
            "events": len(keys),
            "events_each": [sum(1 for key in keys if key in r.first_at) for r in readers],
            "lag_p50_ms": round(pct(lags, 50), 1),
            "lag_p99_ms": round(pct(lags, 99), 1),
            "missed": sum(1 for s in shown if s == 0),
            "duplicated": sum(1 for s in shown if s > 1),
            "rss_mb_each": [peak_rss_mb(p.pid) for p in procs],
        }
    finally:
        for child in reversed(children):
            stop(child)
        broker.stop()


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    title = (
        f"Shared-subscription bench {doc['when']} ({m['cpus']} cores, load average {m['load_avg_1_5_15']}; "
        f"{m['note']}); reference consumers in one group; 1 % of events are sent twice by the generator"
    )
    header = (
        "| devices | consumers | ingest, slowest (s) | steady CPU each (% core) | events printed each "
        "| lag p50 / p99 (ms) | missed / shown twice | peak RSS each (MB) |"
    )
    out = [title, "", header, "|---|---|---|---|---|---|---|---|"]
    out += [
        f"| {r['devices']:,} | {r['consumers']} | {r['ingest_s_max']} | {r['steady_cpu_pct_each']} "
        f"| {r['events_each']} of {r['events']} | {r['lag_p50_ms']} / {r['lag_p99_ms']} "
        f"| {r['missed']} / {r['duplicated']} | {r['rss_mb_each']} |"
        for r in doc["results"]
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--consumers", default="1,2,3", help="group sizes, comma-separated")
    ap.add_argument("--phases", default="8,3", metavar="STEADY,BURST", help="seconds of each phase")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/fleet-shared")
    args = ap.parse_args(argv)
    steady, burst = (float(x) for x in args.phases.split(","))
    results = []
    with tempfile.TemporaryDirectory(prefix="fleet-shared-") as tmp:
        for k in (int(x) for x in args.consumers.split(",")):
            results.append(run_group(args.devices, k, Phases(steady_s=steady, burst_s=burst), Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_note(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(doc))
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
