"""Figures measured in this process on the outbox's own disk: durable enqueue and outbox scale."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from agent.events import Clock, Event, EventType
from agent.outbox import Outbox
from bench.common import PANIC_DATA, SITE, bulk_fill, pct, summary

DEVICE = "gate-bench-1"
BATCH = 20  # the agent's default in-flight window: what one drain round reads and acks


def _events(n: int, kind: EventType = EventType.PANIC) -> list[Event]:
    clock = Clock()
    return [Event.create(clock, kind, "panic", data=PANIC_DATA) for _ in range(n)]


def _timed_puts(ob: Outbox, events: list[Event], fsync_path: Path | None = None) -> dict[str, list[float]]:
    """Wall and CPU µs of each ``put``; with ``fsync_path``, each put follows one timed write+fsync.

    Interleaving the baseline with the puts makes both see the same disk: on a
    shared machine another process's writes can stretch every fsync for a while.
    """
    out: dict[str, list[float]] = {"put": [], "put_cpu": [], "fsync": []}
    fd = os.open(fsync_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if fsync_path else -1
    try:
        for ev in events:
            if fd >= 0:
                data = ev.body(SITE, DEVICE).encode()
                t = time.perf_counter_ns()
                os.write(fd, data)
                os.fsync(fd)
                out["fsync"].append((time.perf_counter_ns() - t) / 1000.0)
            c = time.thread_time_ns()
            t = time.perf_counter_ns()
            ob.put(ev)
            out["put"].append((time.perf_counter_ns() - t) / 1000.0)
            out["put_cpu"].append((time.thread_time_ns() - c) / 1000.0)
    finally:
        if fd >= 0:
            os.close(fd)
    return out


def enqueue(work: Path, n: int, reps: int) -> dict[str, Any]:
    """``outbox.put`` of an alarm against one ``write``+``fsync`` of the same bytes.

    Nothing is acknowledged (the link is down): 64 puts in a row go to the
    intake, the next one commits them all to SQLite with itself, and so on.

    Each repetition uses a fresh outbox and a file beside it, on the outbox's
    filesystem, and alternates one timed write+fsync with one timed put; the
    figure is the median over repetitions of each repetition's p50 and p99.
    """
    runs: list[dict[str, Any]] = []
    size = 0
    for rep in range(reps):
        d = work / f"enqueue{rep}"
        d.mkdir(parents=True, exist_ok=True)
        events = _events(n)
        size = len(events[0].body(SITE, DEVICE).encode())
        with Outbox(d / "outbox.db", site=SITE, device=DEVICE) as ob:
            ob.put(_events(1)[0])  # the first put pays for schema pages; not part of the figure
            got = _timed_puts(ob, events, d / "fsync.dat")
        runs.append(
            {
                "enqueue": summary(got["put"], 1),
                "fsync": summary(got["fsync"], 1),
                "enqueue_cpu": summary(got["put_cpu"], 1),
            }
        )
        shutil.rmtree(d, ignore_errors=True)
    return {"runs": runs, "payload_bytes": size}


def _timed_drain(ob: Outbox, events: int) -> list[float]:
    """Per-event µs of what one drain round does: ``next_batch`` of the window, then ``ack`` of it."""
    per_event = []
    cursor = 0
    for _ in range(max(1, events // BATCH)):
        t = time.perf_counter_ns()
        rows = ob.next_batch(cursor, BATCH)
        if not rows:
            break
        ob.ack(r.seq for r in rows)
        per_event.append((time.perf_counter_ns() - t) / 1000.0 / len(rows))
        cursor = rows[-1].seq
    return per_event


def scale_disk_mb(levels: list[int]) -> int:
    """Room the scale figure needs: about 450 bytes per row, twice over for WAL and slack."""
    return int(sum(levels) * 450 * 2 / 1e6) + 200


def outbox_scale(work: Path, levels: list[int], puts: int, drains: int, reps: int) -> dict[str, Any]:
    """Enqueue and drain cost per event at each pending count.

    One outbox per level is bulk-filled first (large transactions: set-up, not
    the thing measured).  Then each repetition visits every level in turn
    (rotating the order, so a noisy stretch on the disk does not land on one
    level): ``puts`` single-commit puts and ``drains`` events of the drain
    round (``next_batch`` of the window, ``ack``), after which the level is
    topped up again.  Per level: the median over repetitions of each one's
    p50 (and mean) µs per event.
    """
    d = work / "scale"
    d.mkdir(parents=True, exist_ok=True)
    obs: dict[int, Outbox] = {}
    out: dict[str, Any] = {}
    runs: dict[int, list[dict[str, float]]] = {lv: [] for lv in levels}
    try:
        for level in levels:
            t = time.monotonic()
            obs[level] = Outbox(d / f"outbox-{level}.db", site=SITE, device=DEVICE, max_mb=4000)
            bulk_fill(obs[level], level)
            out[str(level)] = {"fill_s": round(time.monotonic() - t, 1)}
        for rep in range(reps):
            for level in levels[rep % len(levels) :] + levels[: rep % len(levels)]:
                ob = obs[level]
                got = _timed_puts(ob, _events(puts))
                drain_us = _timed_drain(ob, min(drains, level // 2))
                runs[level].append(
                    {
                        "enqueue_us": pct(got["put"], 50),
                        "enqueue_cpu_us": pct(got["put_cpu"], 50),
                        "drain_us": pct(drain_us, 50),
                        "enqueue_mean_us": sum(got["put"]) / puts,
                        "drain_mean_us": sum(drain_us) / len(drain_us),
                    }
                )
                bulk_fill(ob, level - ob.pending())
        for level in levels:
            keys = runs[level][0]
            out[str(level)].update({k: round(statistics.median(r[k] for r in runs[level]), 1) for k in keys})
            out[str(level)]["pending"] = obs[level].pending()
            obs[level].close()
            out[str(level)]["db_mb"] = round((d / f"outbox-{level}.db").stat().st_size / 1e6, 1)
            out[str(level)]["open_s"] = _reopen_s(d / f"outbox-{level}.db")
    finally:
        for ob in obs.values():
            ob.close()
        shutil.rmtree(d, ignore_errors=True)
    return out


def _reopen_s(path: Path) -> float:
    """How long the agent's start-up takes to open (and check) an outbox this full."""
    t = time.monotonic()
    with Outbox(path, site=SITE, device=DEVICE, max_mb=4000):
        pass
    return round(time.monotonic() - t, 2)
