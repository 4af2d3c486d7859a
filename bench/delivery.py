"""Figures that cross the broker: press → delivery latency and the drain rate after an outage.

Each agent run has its baseline run in the same broker, measured by the same
subscriber program (``bench/subscriber.py``, a separate process).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.events import with_seq
from agent.outbox import Outbox
from bench import peer
from bench.common import (
    BENCH,
    PY,
    ROOT,
    SITE,
    BenchBroker,
    EntryAgentProc,
    Procs,
    SubscriberRun,
    agent_config,
    bulk_fill,
    cpu_ticks_s,
    sample_event,
    start_subscriber,
    stop_process,
    summary,
)
from tests.support.agentproc import unique_id


def write_template(path: Path, device: str) -> Path:
    """A real panic event's wire payload with placeholders for id, mono_ms and seq."""
    ev = sample_event()
    payload = with_seq(ev.body(SITE, device), 123456).decode()
    payload = (
        payload.replace(f'"id":"{ev.id}"', '"id":"__ID__"')
        .replace(f'"mono_ms":{ev.mono_ms}', '"mono_ms":__MONO__')
        .replace('"seq":123456', '"seq":__SEQ__')
    )
    if not all(k in payload for k in ("__ID__", "__MONO__", "__SEQ__")):
        raise RuntimeError(f"cannot make a template from {payload}")
    path.write_text(payload)
    return path


def first_arrivals(sub: dict[str, Any], match: str) -> dict[str, tuple[float, Any]]:
    """id → (first arrival time, mono_ms) for topics containing ``match``; repeats are ignored."""
    out: dict[str, tuple[float, Any]] = {}
    for t, topic, eid, mono_ms, _seq, _state in sub["arrivals"]:
        if match in topic and eid is not None and eid not in out:
            out[eid] = (t, mono_ms)
    return out


def _matched_ms(arrivals: list[float], press_ns: list[int]) -> list[float]:
    """Arrival i belongs to press i (one message per press, in order); latency in ms, µs-exact stamps."""
    return [(t * 1e9 - p) / 1e6 for t, p in zip(arrivals, press_ns, strict=False)]


def _press_result(lat: list[float], arrived: int, n: int, pressed: dict[str, Any]) -> dict[str, Any]:
    return {**summary(lat), "delivered": arrived, "expected": n, "rss_mb": pressed.get("rss_mb")}


def _run_wrapper(
    procs: Procs, cmd: list[str], log: Path, out: Path, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    with log.open("ab") as logf:
        proc = procs.popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    try:
        rc = proc.wait(timeout)
    finally:
        stop_process(proc)
    if rc != 0 or not out.exists():
        raise RuntimeError(f"{cmd[1]} exited with {rc}; see {log}:\n{log.read_text(errors='replace')[-2000:]}")
    got: dict[str, Any] = json.loads(out.read_text())
    return got


def _agent_env(agent_path: Path | None) -> dict[str, str] | None:
    if agent_path is None:
        return None
    return {"CAMPUS_BENCH_AGENT_PATH": str(agent_path), "PYTHONPATH": f"{agent_path}:{ROOT}"}


# ---- press → delivery ------------------------------------------------------------------------------
# Every contender is pressed the same way: a thread inside its own process stamps time.monotonic_ns()
# and drives the mock pin (or, for raw paho, starts its write+fsync+publish); the same subscriber
# program stamps the arrival on the same clock.


def _panic_subscriber(procs: Procs, broker: BenchBroker, work: Path, dev: str, n: int, gap_ms: float) -> SubscriberRun:
    """The subscriber stamping ``dev``'s ``n`` panic events, started before the contender presses."""
    return start_subscriber(
        procs,
        broker.port,
        [f"campus/+/{dev}/event/#"],
        work / dev / "sub.json",
        expect=n,
        match="/event/panic",
        timeout=n * gap_ms / 1000.0 + 60,
    )


def agent_latency(
    procs: Procs, broker: BenchBroker, work: Path, n: int, gap_ms: float, agent_path: Path | None = None
) -> dict[str, Any]:
    """The agent in-process (``bench/press_agent.py``); one ``/event/panic`` per press.

    ``agent_path``: a folder holding another ``agent`` package to measure instead (A/B runs).
    """
    dev = unique_id("lat")
    cfg = agent_config(work / dev, broker.port, dev)  # input 'panic' with debounce_ms: 0
    sub = _panic_subscriber(procs, broker, work, dev, n, gap_ms)
    out = work / dev / "presses.json"
    pressed = _run_wrapper(
        procs,
        [
            PY,
            str(BENCH / "press_agent.py"),
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--count",
            str(n),
            "--gap-ms",
            str(gap_ms),
        ],
        work / dev / "agent.log",
        out,
        timeout=n * gap_ms / 1000.0 + 60,
        env=_agent_env(agent_path),
    )
    arrivals = [t for t, _m in first_arrivals(sub.result(timeout=30), "/event/panic").values()]
    return _press_result(_matched_ms(arrivals, pressed["press_ns"]), len(arrivals), n, pressed)


def peer_latency(procs: Procs, broker: BenchBroker, work: Path, n: int, gap_ms: float, peer_py: Path) -> dict[str, Any]:
    """mqtt-io in-process (``bench/press_mqttio.py``); an ``ON`` and an ``OFF`` message per press."""
    dev = unique_id("peer")
    prefix = f"peer/{dev}"
    cfg = peer.write_config(work / dev / "mqtt-io.yml", broker.port, prefix, f"bench-{dev}")
    sub = start_subscriber(
        procs,
        broker.port,
        [f"{prefix}/input/#"],
        work / dev / "sub.json",
        expect=2 * n,
        match="/input/panic",
        timeout=n * gap_ms / 1000.0 + 60,
        count_messages=True,
    )
    out = work / dev / "presses.json"
    pressed = _run_wrapper(
        procs,
        [
            str(peer_py),
            str(BENCH / "press_mqttio.py"),
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--count",
            str(n),
            "--gap-ms",
            str(gap_ms),
        ],
        work / dev / "mqtt-io.log",
        out,
        timeout=n * gap_ms / 1000.0 + 60,
        env={"GPIOZERO_PIN_FACTORY": "mock", "PYTHONPATH": ""},
    )
    result = sub.result(timeout=30)
    arrivals = [t for t, topic, _i, _m, _s, state in result["arrivals"] if "/input/panic" in topic and state == "ON"]
    return _press_result(_matched_ms(arrivals, pressed["press_ns"]), len(arrivals), n, pressed)


def baseline_latency(
    procs: Procs, broker: BenchBroker, work: Path, n: int, gap_ms: float, fsync_dir: Path
) -> dict[str, Any]:
    """Raw paho QoS 1, each message stamped, written and fsynced on the outbox's disk, then published."""
    dev = unique_id("raw")
    (work / dev).mkdir(parents=True, exist_ok=True)
    template = write_template(work / dev / "template.json", dev)
    sub = _panic_subscriber(procs, broker, work, dev, n, gap_ms)
    pub = procs.popen(
        [
            PY,
            str(BENCH / "rawpub.py"),
            "latency",
            "--port",
            str(broker.port),
            "--topic",
            f"campus/{SITE}/{dev}/event/panic",
            "--template",
            str(template),
            "--count",
            str(n),
            "--gap-ms",
            str(gap_ms),
            "--fsync-dir",
            str(fsync_dir),
        ],
        stdout=subprocess.PIPE,
    )
    out, _ = pub.communicate(timeout=n * gap_ms / 1000.0 + 60)
    stop_process(pub)
    pub_result = json.loads(out.decode().strip().splitlines()[-1])
    arrivals = [t for t, _m in first_arrivals(sub.result(timeout=30), "/event/panic").values()]
    fs = pub_result.get("fsync_us", [])
    return {
        **_press_result(_matched_ms(arrivals, pub_result["press_ns"]), len(arrivals), n, {}),
        "fsync_us_p50": summary(fs, 1)["p50"],
        "fsync_us_p99": summary(fs, 1)["p99"],
    }


# ---- drain after an outage ---------------------------------------------------------------------------


def _drain_rate(sub: dict[str, Any], n: int) -> dict[str, Any]:
    """From the sender's start (its online status / start marker) to the last new id at the subscriber."""
    starts = [t for t, topic, _id, _m, _s, state in sub["arrivals"] if topic.endswith("/status") and state == "online"]
    firsts = first_arrivals(sub, "/event/panic")
    dupes = sum(1 for _t, topic, *_ in sub["arrivals"] if "/event/panic" in topic) - len(firsts)
    out: dict[str, Any] = {"expected": n, "distinct": len(firsts), "duplicates": dupes, "valid": len(firsts) == n}
    if starts and firsts:
        elapsed = max(t for t, _ in firsts.values()) - starts[0]
        out["elapsed_s"] = round(elapsed, 3)
        out["events_per_s"] = round(n / elapsed, 1) if out["valid"] else None
    else:
        out["events_per_s"] = None
    return out


def agent_drain(
    procs: Procs, broker: BenchBroker, work: Path, n: int, window: int, rate: float | None
) -> dict[str, Any]:
    """``n`` events waiting in the outbox, then the agent meets the broker: time until the subscriber has all.

    ``rate`` None keeps the configured default pacing; otherwise it sets
    ``mqtt.drain_rate_per_s`` (100000, the maximum, for the unpaced figure).
    """
    dev = unique_id("drain")
    mqtt_cfg: dict[str, Any] = {"max_inflight": window}
    if rate is not None:
        mqtt_cfg["drain_rate_per_s"] = rate
    cfg = agent_config(work / dev, broker.port, dev, mqtt=mqtt_cfg, outbox={"max_mb": 500})
    with Outbox(work / dev / "outbox.db", site=SITE, device=dev, max_mb=500) as ob:
        bulk_fill(ob, n)
    timeout = n / 200.0 + 60
    sub = start_subscriber(
        procs,
        broker.port,
        [f"campus/+/{dev}/event/#", f"campus/+/{dev}/status"],
        work / dev / "sub.json",
        expect=n,
        match="/event/panic",
        timeout=timeout,
    )
    agent = EntryAgentProc(cfg, procs).start()
    try:
        result = sub.result(timeout=timeout + 10)
        cpu_s = cpu_ticks_s(agent.proc.pid) if agent.proc is not None else math.nan
    finally:
        agent.stop()
    # CPU per event is far less sensitive to a busy machine than the rate; it includes start-up (~0.3 s)
    return {
        **_drain_rate(result, n),
        "cpu_us_per_event": round(cpu_s / n * 1e6, 1),
        "drain_rate_per_s": load_config(cfg).mqtt.drain_rate_per_s,
        "max_inflight": window,
    }


def baseline_drain(procs: Procs, broker: BenchBroker, work: Path, n: int, window: int) -> dict[str, Any]:
    """Raw paho QoS 1 publishing ``n`` prebuilt messages through the same in-flight window."""
    dev = unique_id("rawdrain")
    (work / dev).mkdir(parents=True, exist_ok=True)
    template = write_template(work / dev / "template.json", dev)
    timeout = n / 200.0 + 60
    sub = start_subscriber(
        procs,
        broker.port,
        [f"campus/+/{dev}/event/#", f"campus/+/{dev}/status"],
        work / dev / "sub.json",
        expect=n,
        match="/event/panic",
        timeout=timeout,
    )
    pub = procs.popen(
        [
            PY,
            str(BENCH / "rawpub.py"),
            "drain",
            "--port",
            str(broker.port),
            "--topic",
            f"campus/{SITE}/{dev}/event/panic",
            "--marker-topic",
            f"campus/{SITE}/{dev}/status",
            "--template",
            str(template),
            "--count",
            str(n),
            "--window",
            str(window),
            "--timeout",
            str(timeout),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = pub.communicate(timeout=timeout + 30)
    finally:
        stop_process(pub)
    result = sub.result(timeout=30)
    res = _drain_rate(result, n)
    pub_result = json.loads(out.decode().strip().splitlines()[-1])
    res["publisher_elapsed_s"] = round(pub_result.get("publisher_elapsed_s", 0.0), 3)
    res["cpu_us_per_event"] = round(pub_result.get("cpu_s", math.nan) / n * 1e6, 1)
    return res
