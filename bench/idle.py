"""Memory and idle CPU of ``campus-agent run``, against a bare Python with the same libraries.

Agents and bare interpreters run side by side for the whole period, each
agent with 2 panic inputs, an LED and a buzzer, no camera, a 30 s heartbeat
and production MQTT timings, connected to a loopback broker.  The agents
whose RSS is taken get a few presses early on (the recording path is then
in memory too); the agents whose CPU is taken are never pressed.  CPU is read from ``/proc``: ``utime+stime`` of the process (10 ms
ticks) and, where the kernel shows it, the sum of every thread's
``se.sum_exec_runtime`` (nanoseconds).  RSS is ``VmRSS`` at the end.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from bench.common import PY, BenchBroker, EntryAgentProc, Procs, agent_config, cpu_ticks_s, stop_process
from tests.support.agentproc import unique_id

BASELINE_IMPORTS = "import paho.mqtt.client, yaml, gpiozero, gpiozero.pins.mock, sqlite3"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024.0, 2)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_sched_s(pid: int) -> tuple[float, frozenset[str]] | None:
    """Sum of every live thread's ``se.sum_exec_runtime`` in seconds, and the thread ids; None if not shown."""
    total = 0.0
    tids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "sched").read_text(encoding="ascii").splitlines():
                if line.startswith("se.sum_exec_runtime"):
                    total += float(line.split(":")[1]) / 1000.0
                    tids.append(task.name)
                    break
    return (total, frozenset(tids)) if tids else None


def _window_pct(a: tuple[float, Any], b: tuple[float, Any], seconds: float) -> dict[str, float | None]:
    ticks = (b[0] - a[0]) / seconds * 100.0
    sched = None
    if a[1] is not None and b[1] is not None and a[1][1] == b[1][1]:  # same threads: no thread's time got lost
        sched = (b[1][0] - a[1][0]) / seconds * 100.0
    return {"ticks_pct": round(ticks, 4), "sched_pct": round(sched, 4) if sched is not None else None}


def _start_agent(procs: Procs, broker: BenchBroker, work: Path, prefix: str) -> EntryAgentProc:
    dev = unique_id(prefix)
    cfg = agent_config(
        work / dev,
        broker.port,
        dev,
        mqtt={"keepalive_s": 30, "reconnect_min_s": 1, "reconnect_max_s": 60, "connect_timeout_s": 10},  # defaults
        inputs=[
            {"name": "panic", "kind": "panic_button", "pin": 17},
            {"name": "desk-panic", "kind": "panic_button", "pin": 5},
        ],
        outputs={"ack_led": {"pin": 22}, "buzzer": {"pin": 23}},
        heartbeat={"interval_s": 30},
    )
    return EntryAgentProc(cfg, procs).start()


def memory_and_idle(
    procs: Procs, broker: BenchBroker, work: Path, *, agents: int, total_s: float, warmup_s: float, window_s: float
) -> dict[str, Any]:
    """``agents`` each of: pressed agents (RSS), untouched agents (idle CPU) and bare interpreters (baseline RSS).

    The pressed agents get 5 presses per input right after connecting, so
    their RSS includes the recording path; the idle agents are never pressed,
    so their LED stays in its idle pattern and no alarm is in flight.  CPU
    windows of ``window_s`` start after ``warmup_s``; RSS is read at ``total_s``.
    """
    pressed = [_start_agent(procs, broker, work, "mem") for _ in range(agents)]
    quiet = [_start_agent(procs, broker, work, "idle") for _ in range(agents)]
    bare = [procs.popen([PY, "-c", f"{BASELINE_IMPORTS}; import signal; signal.pause()"]) for _ in range(agents)]
    started = time.monotonic()
    for a in pressed + quiet:
        a.wait_connected()
    for a in pressed:
        for _ in range(5):
            a.click("panic")
            a.click("desk-panic")
    pids = [a.proc.pid for a in quiet if a.proc is not None]
    windows: list[dict[str, float | None]] = []
    t = started + warmup_s
    while t + window_s <= started + total_s + 0.5:
        time.sleep(max(0.0, t - time.monotonic()))
        before = {pid: (cpu_ticks_s(pid), cpu_sched_s(pid)) for pid in pids}
        t0 = time.monotonic()
        time.sleep(max(0.0, t + window_s - time.monotonic()))
        after = {pid: (cpu_ticks_s(pid), cpu_sched_s(pid)) for pid in pids}
        secs = time.monotonic() - t0
        windows.extend(_window_pct(before[pid], after[pid], secs) for pid in pids)
        t += window_s
    time.sleep(max(0.0, started + total_s - time.monotonic()))
    rss = [rss_mb(a.proc.pid) for a in pressed if a.proc is not None]
    idle_rss = [rss_mb(pid) for pid in pids]
    base_rss = [rss_mb(p.pid) for p in bare]
    threads = [len(list(Path(f"/proc/{pid}/task").iterdir())) for pid in pids]
    for a in pressed + quiet:
        a.stop()
    for p in bare:
        stop_process(p)
    return {
        "rss_mb": rss,
        "idle_agents_rss_mb": idle_rss,
        "baseline_rss_mb": base_rss,
        "windows": windows,
        "threads": threads,
        "ran_s": round(time.monotonic() - started, 1),
        "window_s": window_s,
        "warmup_s": warmup_s,
    }
