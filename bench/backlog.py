"""Backlog figure (issue 9, item 4): real presses made while a big backlog of routine events drains.

    .venv/bin/python bench/backlog.py            # 50,000 pending, 20 presses; writes bench/results/backlog.json
    .venv/bin/python bench/backlog.py --quick    # 10,000 pending (20 s at the default pace: the 20 presses fit)

The agent starts with ``pending`` test presses in its outbox (routine rows: a
test press never overtakes), the default ``drain_rate_per_s`` (500/s) and
``max_inflight`` (20), and the subscriber's clock starts at the agent's online
status.  One second later ``presses`` real presses are made on the mock pin,
``gap_s`` apart, while the drain goes on.  Press → delivery is the
subscriber's ``time.monotonic()`` at arrival minus the event's ``mono_ms``,
exactly as the latency figure measures it; the baseline is raw paho with one
fsync per message on an idle broker (``bench/rawpub.py``), in the same run.
The same presses on an idle agent are measured too, for reference.  The drain
rate is backlog rows per second from the online status to the last one.  Also run from ``bench/run.py`` as the ``backlog`` figure.
"""

from __future__ import annotations

import bisect
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.events import Clock, Event, EventType
from agent.outbox import Outbox
from bench import delivery
from bench.common import (
    SITE,
    BenchBroker,
    EntryAgentProc,
    Procs,
    agent_config,
    median_summary,
    run_standalone,
    start_broker,
    start_subscriber,
    summary,
)
from tests.support.agentproc import unique_id

FULL = {"pending": 50_000, "presses": 20, "gap_s": 0.5, "reps": 1}
QUICK = {"pending": 10_000, "presses": 20, "gap_s": 0.5, "reps": 1}


def fill_test_presses(ob: Outbox, count: int, chunk: int = 10_000) -> None:
    """``count`` test presses, one transaction per ``chunk`` (set-up, not measured)."""
    clock = Clock()
    for start in range(0, count, chunk):
        ob.put_many(
            [
                Event.create(clock, EventType.PANIC, "panic", test=True, data={"pin": 17, "contact": "normally_open"})
                for _ in range(min(chunk, count - start))
            ]
        )


def agent_backlog(
    procs: Procs, broker: BenchBroker, work: Path, pending: int, presses: int, gap_s: float
) -> dict[str, Any]:
    """One run: the backlog drains at the default rate while real presses are made."""
    dev = unique_id("backlog")
    cfg = agent_config(work / dev, broker.port, dev, outbox={"max_mb": 500})
    with Outbox(work / dev / "outbox.db", site=SITE, device=dev, max_mb=500) as ob:
        fill_test_presses(ob, pending)
    timeout = pending / 250.0 + 120
    # every event: the backlog, agent_started and the presses
    sub = start_subscriber(
        procs,
        broker.port,
        [f"campus/+/{dev}/event/#", f"campus/+/{dev}/status"],
        work / dev / "sub.json",
        expect=pending + presses + 1,
        match="/event/",
        timeout=timeout,
    )
    agent = EntryAgentProc(cfg, procs).start()
    try:
        agent.wait_connected()
        start = time.monotonic() + 1.0
        for i in range(presses):
            delay = start + i * gap_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            agent.click("panic")
        result = sub.result(timeout=timeout + 10)
    finally:
        agent.stop()
    return _evaluate(result, pending, presses)


def _evaluate(sub: dict[str, Any], pending: int, presses: int) -> dict[str, Any]:
    online = [t for t, topic, _i, _m, _s, state in sub["arrivals"] if topic.endswith("/status") and state == "online"]
    first: dict[str, tuple[float, str, Any, int]] = {}  # id → (arrival, topic, mono_ms, position)
    for t, topic, eid, mono_ms, seq, _state in sub["arrivals"]:
        if "/event/" in topic and eid is not None and eid not in first:
            first[eid] = (t, topic, mono_ms, seq)
    backlog = {eid: v for eid, v in first.items() if v[3] is not None and v[3] <= pending}
    real = {eid: v for eid, v in first.items() if "/event/panic" in v[1] and v[3] is not None and v[3] > pending}
    latency = [(t - mono_ms / 1000.0) * 1000.0 for t, _topic, mono_ms, _seq in real.values()]
    # Backlog events that arrived between each press and its delivery: at most about one send window
    # when the agent does its part; more means the wait was in the broker's or the subscriber's queue.
    times = sorted(t for t, *_ in backlog.values())
    between = [
        bisect.bisect_left(times, t) - bisect.bisect_left(times, mono_ms / 1000.0)
        for t, _topic, mono_ms, _seq in real.values()
    ]
    out: dict[str, Any] = {
        "pending": pending,
        "presses": presses,
        "backlog_delivered": len(backlog),
        "presses_delivered": len(real),
        "press_to_delivery_ms": summary(latency),
        "latencies_ms": sorted(round(x, 2) for x in latency),
        "backlog_arrivals_between_max": max(between, default=None),
    }
    if online and backlog:
        last_real = max((t for t, *_ in real.values()), default=None)
        last_backlog = max(t for t, *_ in backlog.values())
        elapsed = last_backlog - online[0]
        out["drain_elapsed_s"] = round(elapsed, 3)
        out["drain_events_per_s"] = round(len(backlog) / elapsed, 1)
        # every press arrived while the backlog was still draining
        out["presses_during_drain"] = last_real is not None and last_real < last_backlog
    out["valid"] = len(backlog) == pending and len(real) == presses
    return out


def figure(mode: str, work: Path) -> dict[str, Any]:
    """The backlog figure and its baseline, each on the same broker; medians over the repetitions."""
    p = QUICK if mode == "quick" else FULL
    runs, base, idle = [], [], []
    with Procs() as procs:
        broker = start_broker(procs, work)
        for _ in range(p["reps"]):
            runs.append(agent_backlog(procs, broker, work, p["pending"], p["presses"], p["gap_s"]))
            base.append(delivery.baseline_latency(procs, broker, work, p["presses"], p["gap_s"] * 1000, fsync_dir=work))
            idle.append(delivery.agent_latency(procs, broker, work, p["presses"], p["gap_s"] * 1000))
    lat = median_summary([r["press_to_delivery_ms"] for r in runs])
    blat = median_summary(base)
    ratio = round(lat["p99"] / blat["p99"], 2) if blat["p99"] else None
    return {
        "pending": p["pending"],
        "presses": p["presses"],
        "press_gap_s": p["gap_s"],
        "press_to_delivery_ms": lat,
        "baseline_delivery_ms": blat,
        "idle_agent_delivery_ms": median_summary(idle),  # the same presses with nothing pending, for reference
        "drain_events_per_s": min(r.get("drain_events_per_s") or 0.0 for r in runs),
        "presses_during_drain": all(r.get("presses_during_drain") for r in runs),
        "target": {
            "press_to_delivery": "p99 <= 2x baseline p99",
            "ratio": ratio,
            "result": "PASS" if ratio is not None and ratio <= 2.0 else "MISS",
        },
        "runs": {"agent": runs, "baseline": base, "idle_agent": idle},
        "valid": all(r["valid"] for r in runs) and all(b["delivered"] == b["expected"] for b in [*base, *idle]),
    }


def line(res: dict[str, Any]) -> str:
    """The figure in one sentence."""
    lat, blat, ilat = res["press_to_delivery_ms"], res["baseline_delivery_ms"], res["idle_agent_delivery_ms"]
    return (
        f"backlog {res['pending']:,} pending, {res['presses']} presses: press → delivery p50/p99 "
        f"{lat['p50']:.2f}/{lat['p99']:.2f} ms (raw paho {blat['p50']:.2f}/{blat['p99']:.2f} ms, "
        f"idle agent {ilat['p50']:.2f}/{ilat['p99']:.2f} ms, "
        f"ratio {res['target']['ratio']}: {res['target']['result']}); drain {res['drain_events_per_s']:.0f} "
        f"events/s; presses during the drain: {res['presses_during_drain']}; valid: {res['valid']}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_standalone(
        argv, doc=__doc__ or "", name="backlog", quick_help="10,000 pending instead of 50,000", figure=figure, line=line
    )


if __name__ == "__main__":
    sys.exit(main())
