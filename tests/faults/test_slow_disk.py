"""A slow disk: the outbox's commits stall while people press and release buttons on several inputs.

The seam is the simplest one SQLite offers: a second connection holds the
outbox's write lock (``BEGIN IMMEDIATE``) for a while, so every commit of the
agent waits, exactly as behind a long fsync on an SD card.  Meanwhile one
thread per input presses and releases its button (each press and each gap
held longer than ``debounce_ms``, as a person's would).  Every press must be
recorded (the debouncer replays queued edges on their own stamps) and reach
the central.

The full run adds stalls longer than the outbox's 10 s busy timeout: the put
fails, the presses are held in memory (``held ... in memory``), sent directly
while the link is up, and stored as soon as the lock goes.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agent.errors import ControlError
from tests.faults.harness import (
    EventSink,
    MakeAgent,
    MakeBroker,
    count,
    describe_missing,
    log_text,
    modes,
    rng_for,
    seq_problems,
    settle,
    wait_connected,
    wait_logged,
)
from tests.support.agentproc import AgentProc, unique_id

pytestmark = pytest.mark.broker

INPUTS = [{"name": f"in{i}", "kind": "panic_button", "pin": pin, "debounce_ms": 50} for i, pin in enumerate((5, 6, 12))]


class Fingers:
    """One thread per input: press for 80-250 ms, release for 80-250 ms, until stopped (bounded)."""

    def __init__(self, agent: AgentProc, rng: random.Random, max_presses: int = 400) -> None:
        self.agent = agent
        self.presses = {str(i["name"]): 0 for i in INPUTS}
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name, random.Random(rng.random()), max_presses), daemon=True)
            for name in self.presses
        ]

    def start(self) -> Fingers:
        for t in self._threads:
            t.start()
        return self

    def _run(self, name: str, rng: random.Random, max_presses: int) -> None:
        while not self._stop.is_set() and self.presses[name] < max_presses:
            try:
                self.agent.press(name)
                time.sleep(rng.uniform(0.08, 0.25))  # the finger's hold: never cut short, even by stop()
                self.agent.release(name)
                self.presses[name] += 1
            except ControlError:
                self.errors += 1
            self._stop.wait(rng.uniform(0.08, 0.25))

    def stop(self) -> int:
        self._stop.set()
        for t in self._threads:
            t.join(15)
            assert not t.is_alive(), "a presser thread did not stop"
        return sum(self.presses.values())


def _stall(db: Path, seconds: float) -> None:
    """Hold the outbox's write lock for ``seconds``: every commit of the agent waits meanwhile."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)  # the length of the stall is the fault itself
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.mark.parametrize("mode", modes())
def test_slow_disk__presses_on_several_inputs_during_stalls__nothing_lost(
    mode: str, brokers: MakeBroker, agents: MakeAgent, tmp_path: Path
) -> None:
    rng = rng_for("slow-disk", mode)
    stalls = [rng.uniform(1.0, 3.0) for _ in range(count(mode, 2, 8))]
    if mode == "full":
        stalls[2] = stalls[5] = 12.0  # past the outbox's 10 s busy timeout: held in memory, sent directly
    t0 = time.monotonic()
    broker = brokers()
    device = unique_id("slowdisk")
    sink = EventSink(broker.port, device)
    try:
        agent = agents(broker.port, device, inputs=INPUTS)
        wait_connected(agent)
        wait_logged(agent, 1, type_="agent_started")
        db = tmp_path / device / "outbox.db"
        fingers = Fingers(agent, rng).start()
        try:
            for seconds in stalls:
                _stall(db, seconds)
                time.sleep(rng.uniform(0.2, 1.0))  # the disk keeps up for a moment between stalls
        finally:
            made = fingers.stop()
        recorded = wait_logged(agent, made, timeout=60)
        panics = {i: r for i, r in recorded.items() if r.type == "panic"}
        held = log_text(agent).count("not yet on disk")
        row = settle(
            f"slow disk x{len(stalls)}",
            t0,
            recorded,
            sink,
            timeout=60,
            note=f"{made} presses on {len(INPUTS)} inputs during {len(stalls)} stalls of "
            f"{min(stalls):.1f}-{max(stalls):.1f} s; {held} held in memory",
        )
        # A press whose release request failed is not counted as made, but may well be recorded.
        assert len(panics) >= made, f"{made} presses made, only {len(panics)} recorded"
        assert fingers.errors or len(panics) == made, f"{made} presses made, {len(panics)} recorded"
        assert row.lost == 0, describe_missing(row, recorded)
        assert not seq_problems(recorded, sink)
        assert agent.stop() == 0
    finally:
        sink.close()
