"""Benchmarks of issue 6: the agent against raw paho-mqtt, fsync and a bare Python, on a loopback mosquitto.

    .venv/bin/python bench/run.py            # full run (about 18 minutes; run it on a quiet machine)
    .venv/bin/python bench/run.py --quick    # reduced counts, same keys, under 3 minutes
    .venv/bin/python bench/run.py --only drain,enqueue --quick   # some figures (for profiling)

To measure a candidate change without touching the tree, point
``CAMPUS_BENCH_AGENT_PATH`` at a directory holding a modified ``agent``
package; every figure then runs that code (recorded under ``agent_under_test``).

Writes ``bench/results/latest.json`` and ``bench/results/latest.md`` and
prints the table.  Every figure is the median over repeated runs; every
agent figure's baseline is measured in the same run.  Every broker, agent,
subscriber and publisher started here binds or connects to 127.0.0.1 only
and is stopped in ``finally``, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if os.environ.get("CAMPUS_BENCH_AGENT_PATH"):  # before anything imports the agent
    sys.path.insert(0, os.environ["CAMPUS_BENCH_AGENT_PATH"])

from bench import backlog, delivery, idle, local, peer, photos
from bench.common import (
    BENCH,
    PY,
    BenchBroker,
    Procs,
    median_of,
    median_summary,
    remove_socket_dirs,
    start_broker,
    start_subscriber,
)
from bench.machine import agent_under_test, machine_info
from bench.report import evaluate, render
from tests.support.agentproc import unique_id

FIGURES = ("latency", "drain", "enqueue", "burst", "memory", "scale", "backlog", "photos")


@dataclass(frozen=True)
class Plan:
    """Counts and repetitions for one mode."""

    mode: str
    presses: int
    press_gap_ms: float
    latency_reps: int
    drain_events: int
    drain_reps: int
    window: int
    paced_events: int
    enqueue_puts: int
    enqueue_reps: int
    burst_presses: int
    burst_reps: int
    memory_s: float
    memory_agents: int
    idle_warmup_s: float
    idle_window_s: float
    scale_levels: tuple[int, ...]
    scale_puts: int
    scale_drains: int
    scale_reps: int


FULL = Plan(
    "full",
    presses=1000,
    press_gap_ms=25,
    latency_reps=3,
    drain_events=50_000,
    drain_reps=3,
    window=20,
    paced_events=5000,
    enqueue_puts=1000,
    enqueue_reps=5,
    burst_presses=1000,
    burst_reps=3,
    memory_s=600,
    memory_agents=3,
    idle_warmup_s=60,
    idle_window_s=60,
    scale_levels=(1_000, 100_000, 1_000_000),
    scale_puts=200,
    scale_drains=2000,
    scale_reps=5,
)
QUICK = Plan(
    "quick",
    presses=150,
    press_gap_ms=20,
    latency_reps=2,
    drain_events=8_000,
    drain_reps=2,
    window=20,
    paced_events=1000,
    enqueue_puts=300,
    enqueue_reps=3,
    burst_presses=1000,
    burst_reps=1,
    memory_s=40,
    memory_agents=2,
    idle_warmup_s=10,
    idle_window_s=30,
    scale_levels=(1_000, 100_000, 1_000_000),
    scale_puts=100,
    scale_drains=1000,
    scale_reps=3,
)


# ---- one function per figure; each gets its own broker and child processes --------------------------


def fig_latency(plan: Plan, work: Path) -> dict[str, Any]:
    peer_py = peer.peer_python(work.parent)  # made once under --workdir, reused by later runs
    runs: dict[str, list[dict[str, Any]]] = {"agent": [], "baseline": [], "peer": []}
    with Procs() as procs:
        broker = start_broker(procs, work)
        who = ["agent", "baseline", "peer"]
        for rep in range(plan.latency_reps):
            for name in who[rep % 3 :] + who[: rep % 3]:  # each goes first in turn
                if name == "agent":
                    runs[name].append(delivery.agent_latency(procs, broker, work, plan.presses, plan.press_gap_ms))
                elif name == "baseline":
                    runs[name].append(
                        delivery.baseline_latency(procs, broker, work, plan.presses, plan.press_gap_ms, fsync_dir=work)
                    )
                else:
                    runs[name].append(
                        delivery.peer_latency(procs, broker, work, plan.presses, plan.press_gap_ms, peer_py)
                    )
    lost = [r for rs in runs.values() for r in rs if r["delivered"] != r["expected"]]
    return {
        "press_to_delivery_ms": median_summary(runs["agent"]),
        "baseline_delivery_ms": median_summary(runs["baseline"]),
        "peer_delivery_ms": median_summary(runs["peer"]),
        "peer": {
            "name": peer.PEER,
            "versions": peer.peer_versions(peer_py),
            "rss_mb_after_presses": median_of(runs["peer"], "rss_mb", 2),
        },
        "agent_rss_mb_after_presses": median_of(runs["agent"], "rss_mb", 2),
        "baseline_fsync_us": {
            "p50": median_of(runs["baseline"], "fsync_us_p50", 1),
            "p99": median_of(runs["baseline"], "fsync_us_p99", 1),
        },
        "runs": runs,
        "valid": not lost,
    }


def fig_drain(plan: Plan, work: Path) -> dict[str, Any]:
    agent_runs, base_runs = [], []
    with Procs() as procs:
        broker = start_broker(procs, work)
        for rep in range(plan.drain_reps):
            order = [True, False] if rep % 2 == 0 else [False, True]
            for is_agent in order:
                if is_agent:
                    agent_runs.append(
                        delivery.agent_drain(procs, broker, work, plan.drain_events, plan.window, rate=100_000)
                    )
                else:
                    base_runs.append(delivery.baseline_drain(procs, broker, work, plan.drain_events, plan.window))
        paced = delivery.agent_drain(procs, broker, work, plan.paced_events, plan.window, rate=None)
        drops = broker.dropped_warnings()
    invalid = [r for r in [*agent_runs, *base_runs, paced] if not r["valid"]]
    return {
        "drain_events_per_s": median_of(agent_runs, "events_per_s", 1),
        "baseline_events_per_s": median_of(base_runs, "events_per_s", 1),
        "drain_cpu_us_per_event": median_of(agent_runs, "cpu_us_per_event", 1),
        "baseline_cpu_us_per_event": median_of(base_runs, "cpu_us_per_event", 1),
        "drain_paced": {
            "drain_rate_per_s": paced.get("drain_rate_per_s"),
            "events": plan.paced_events,
            "events_per_s": paced.get("events_per_s"),
        },
        "broker_drop_warnings": drops,
        "runs": {"agent": agent_runs, "baseline": base_runs, "paced": paced},
        "valid": not invalid and drops == 0,
    }


def fig_enqueue(plan: Plan, work: Path) -> dict[str, Any]:
    got = local.enqueue(work, plan.enqueue_puts, plan.enqueue_reps)
    runs = got["runs"]
    return {
        "enqueue_us": median_summary([r["enqueue"] for r in runs]),
        "baseline_fsync_us": median_summary([r["fsync"] for r in runs]),
        "enqueue_cpu_us": median_summary([r["enqueue_cpu"] for r in runs]),
        "payload_bytes": got["payload_bytes"],
        "runs": runs,
        "valid": True,
    }


def fig_burst(plan: Plan, work: Path) -> dict[str, Any]:
    runs = []
    with Procs() as procs:
        broker = start_broker(procs, work)
        for rep in range(plan.burst_reps):
            dev = unique_id("burst")
            (work / dev).mkdir(parents=True, exist_ok=True)
            sub = start_subscriber(
                procs,
                broker.port,
                [f"campus/+/{dev}/event/#"],
                work / dev / "sub.json",
                expect=plan.burst_presses,
                match="/event/panic",
                timeout=90,
            )
            proc = procs.popen(
                [
                    PY,
                    str(BENCH / "burst.py"),
                    "--port",
                    str(broker.port),
                    "--device",
                    dev,
                    "--workdir",
                    str(work / dev),
                    "--presses",
                    str(plan.burst_presses),
                ],
                stdout=subprocess.PIPE,
            )
            out, _ = proc.communicate(timeout=150)
            if proc.returncode != 0:
                raise RuntimeError(f"burst run {rep} failed with {proc.returncode}")
            res = json.loads(out.decode().strip().splitlines()[-1])
            res["delivered"] = len(delivery.first_arrivals(sub.result(timeout=60), "/event/panic"))
            runs.append(res)
    worst = max(r["edge_to_durable_ms"]["max"] for r in runs)
    return {
        "presses": plan.burst_presses,
        "press_span_s": max(r["press_span_s"] for r in runs),
        "recorded": min(r["recorded"] for r in runs),
        "delivered": min(r["delivered"] for r in runs),
        "edge_to_durable_ms": {**median_summary([r["edge_to_durable_ms"] for r in runs]), "max": worst},
        "callback_held_ms_max": max(r["callback_held_ms"]["max"] for r in runs),
        "heavy_modules_loaded": sorted({m for r in runs for m in r["heavy_modules_loaded"]}),
        "runs": runs,
        "valid": True,
    }


def fig_memory(plan: Plan, work: Path) -> dict[str, Any]:
    with Procs() as procs:
        broker = start_broker(procs, work)
        got = idle.memory_and_idle(
            procs,
            broker,
            work,
            agents=plan.memory_agents,
            total_s=plan.memory_s,
            warmup_s=plan.idle_warmup_s,
            window_s=plan.idle_window_s,
        )
    windows = got["windows"]
    sched = [w["sched_pct"] for w in windows if w["sched_pct"] is not None]
    ticks = [w["ticks_pct"] for w in windows]
    return {
        "rss_mb": round(statistics.median(got["rss_mb"]), 2),
        "baseline_rss_mb": round(statistics.median(got["baseline_rss_mb"]), 2),
        # ns-precise per-thread sums where the kernel shows them, else 10 ms ticks
        "idle_cpu_pct": round(statistics.median(sched if len(sched) == len(ticks) else ticks), 4),
        "idle_cpu_max_window_pct": round(max(sched if len(sched) == len(ticks) else ticks), 4),
        "idle_cpu_ticks_pct": round(statistics.median(ticks), 4),
        "runs": got,
        "valid": True,
    }


def fig_scale(plan: Plan, work: Path) -> dict[str, Any]:
    levels = list(plan.scale_levels)
    notes = []
    free_mb = shutil.disk_usage(work).free // 1_000_000
    while len(levels) > 1 and local.scale_disk_mb(levels) > free_mb - 1000:
        notes.append(f"skipped {levels[-1]} pending: needs about {local.scale_disk_mb(levels)} MB, {free_mb} MB free")
        levels.pop()
    got = local.outbox_scale(work, levels, plan.scale_puts, plan.scale_drains, plan.scale_reps)
    for lv in FULL.scale_levels:  # the key structure stays the same when a level is not measured
        if str(lv) not in got:
            got[str(lv)] = None
            if lv not in plan.scale_levels:
                notes.append(f"{lv} pending not measured in a {plan.mode} run")
    return {"outbox_scale": got, "notes": notes, "valid": True}


RUNNERS: dict[str, Callable[[Plan, Path], dict[str, Any]]] = {
    "latency": fig_latency,
    "drain": fig_drain,
    "enqueue": fig_enqueue,
    "burst": fig_burst,
    "memory": fig_memory,
    "scale": fig_scale,
    "backlog": lambda plan, work: backlog.figure(plan.mode, work),  # issue 9: real presses behind 50,000 pending
    "photos": lambda plan, work: photos.figure(plan.mode, work),  # issue 13: alarms with photos on/off, press → photo
}


# ---- assembling the results ------------------------------------------------------------------------


def assemble(
    plan: Plan, machine: dict[str, Any], figs: dict[str, dict[str, Any]], started: float, work: Path
) -> dict[str, Any]:
    nan = math.nan
    lat, drain, enq = figs.get("latency", {}), figs.get("drain", {}), figs.get("enqueue", {})
    mem, scale = figs.get("memory", {}), figs.get("scale", {})
    empty = {"p50": nan, "p99": nan}
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res: dict[str, Any] = {
        "mode": plan.mode,
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine,
        "agent_under_test": agent_under_test(),
        "press_to_delivery_ms": lat.get("press_to_delivery_ms", empty),
        "baseline_delivery_ms": lat.get("baseline_delivery_ms", empty),
        "peer_delivery_ms": lat.get("peer_delivery_ms", empty),
        "peer": lat.get("peer"),
        "agent_rss_mb_after_presses": lat.get("agent_rss_mb_after_presses", nan),
        "drain_events_per_s": drain.get("drain_events_per_s", nan),
        "baseline_events_per_s": drain.get("baseline_events_per_s", nan),
        "enqueue_us": enq.get("enqueue_us", empty),
        "baseline_fsync_us": enq.get("baseline_fsync_us", empty),
        "rss_mb": mem.get("rss_mb", nan),
        "baseline_rss_mb": mem.get("baseline_rss_mb", nan),
        "idle_cpu_pct": mem.get("idle_cpu_pct", nan),
        "outbox_scale": scale.get("outbox_scale", {str(lv): None for lv in FULL.scale_levels}),
        "burst": {k: v for k, v in figs.get("burst", {}).items() if k != "runs"},
        "drain_paced": drain.get("drain_paced"),
        "backlog": {k: v for k, v in figs.get("backlog", {}).items() if k != "runs"},
        "photos": {k: v for k, v in figs.get("photos", {}).items() if k != "runs"},
        "drain_cpu_us_per_event": {
            "agent": drain.get("drain_cpu_us_per_event", nan),
            "baseline": drain.get("baseline_cpu_us_per_event", nan),
        },
        "plan": asdict(plan),
        "setup": {
            "workdir_fs": machine["outbox_disk"]["fstype"],
            "broker_settings": list(BenchBroker.SETTINGS),
            "press_inputs": "mock pins, debounce_ms: 0 (the configured debounce delays a press by design)",
            "latency": "subscriber's time.monotonic() at arrival minus a time.monotonic_ns() stamp taken by a "
            "thread inside the publishing process just before it drives the mock pin (agent: "
            "bench/press_agent.py, mqtt-io: bench/press_mqttio.py) or, for raw paho, before its "
            "write+fsync+publish; arrival i is press i",
            "drain": "from the sender's online status (baseline: a start marker) to the last new id at the "
            "subscriber; agent with drain_rate_per_s 100000 and max_inflight = the baseline's window",
            "memory_window": f"{plan.memory_s:g} s"
            + (" (quick: the full run uses 600 s)" if plan.mode == "quick" else ""),
            "baseline_rss": idle.BASELINE_IMPORTS,
        },
        "details": figs,
    }
    res["targets"] = evaluate(res, figs)
    res["workdir"] = str(work)
    return res


def _no_nan(x: Any) -> Any:
    """NaN (a figure not measured) becomes null: the JSON stays valid for every parser."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


def write_results(res: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "latest.json", out_dir / "latest.md"
    tmp = out_dir / "latest.json.tmp"
    tmp.write_text(json.dumps(_no_nan(res), indent=2, default=str, allow_nan=False) + "\n")
    tmp.replace(js)
    tmp = out_dir / "latest.md.tmp"
    tmp.write_text(render(res))
    tmp.replace(md)
    return js, md


def _on_term(*_a: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced counts and shorter runs (under 3 minutes)")
    p.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {', '.join(FIGURES)}")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp"),
        help="where outboxes and logs go: put it on the filesystem the outbox lives on (default /var/tmp)",
    )
    p.add_argument("--out-dir", type=Path, default=BENCH / "results")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, outboxes)")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(only) - set(FIGURES)
    if unknown:
        p.error(f"unknown figure(s): {', '.join(sorted(unknown))}; known: {', '.join(FIGURES)}")
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIG_IGN)
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="campus-bench-", dir=args.workdir))
    started = time.monotonic()
    machine = machine_info(work)
    if machine["outbox_disk"]["fstype"] in ("tmpfs", "ramfs"):
        print(
            f"WARNING: {work} is on {machine['outbox_disk']['fstype']}: fsync costs nothing there; "
            "use --workdir on the outbox's real filesystem",
            file=sys.stderr,
        )
    figs: dict[str, dict[str, Any]] = {}
    try:
        for name in FIGURES:
            if name not in only:
                continue
            t = time.monotonic()
            print(f"[{time.monotonic() - started:6.1f} s] {name} ...", flush=True)
            try:
                figs[name] = RUNNERS[name](plan, work)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                traceback.print_exc()
                figs[name] = {"error": f"{type(exc).__name__}: {exc}", "valid": False}
            figs[name]["seconds"] = round(time.monotonic() - t, 1)
    except KeyboardInterrupt:
        print("interrupted: every process started here has been stopped; no results written", file=sys.stderr)
        return 130
    finally:
        remove_socket_dirs()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res = assemble(plan, machine, figs, started, work)
    js, md = write_results(res, args.out_dir)
    print(render(res))
    print(f"wrote {js} and {md} in {res['duration_s']:.0f} s")
    with contextlib.suppress(Exception):
        if any(not f.get("valid", False) for f in figs.values()):
            print("some figures are INVALID (loss, errors or broker drops): see 'details' in the JSON", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
