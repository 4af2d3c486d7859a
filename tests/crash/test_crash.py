"""SIGKILL at random moments loses no event whose put() returned.

A child process puts events in a loop and prints each id only after put()
returned; the parent kills it after a random delay, reopens the outbox (WAL
recovery) and checks every reported id is there, ``seq`` order intact.  What
this does not prove: fsync against power loss (a killed process leaves its
writes in the page cache); that rests on WAL + synchronous=FULL, asserted in
test_outbox.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.outbox import Outbox
from tests.support.outboxfile import pending

CHILD = Path(__file__).with_name("outbox_child.py")
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("CRASH_ROUNDS", "50"))


def _run_and_kill(db: Path, rng: random.Random, seed: int) -> list[tuple[str, int]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, str(CHILD), str(db), str(seed)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    assert p.stdout.readline() == "READY\n"
    acked: list[tuple[str, int]] = []

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("OK "):
                _, eid, seq = line.split()
                acked.append((eid, int(seq)))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(rng.uniform(0.005, 0.3))  # the random moment of the kill is the point of the test
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    reader.join(10)
    assert p.returncode == -signal.SIGKILL
    return acked


@pytest.mark.timeout_s(180)
def test_sigkill__loses_no_reported_event(tmp_path: Path) -> None:
    seed = int(os.environ.get("SEED", "1"))
    rng = random.Random(seed)
    db = tmp_path / "outbox.db"
    reported: dict[str, int] = {}
    for it in range(ROUNDS):
        for eid, seq in _run_and_kill(db, rng, seed + it):
            reported[eid] = seq
        present = {i: s for i, (s, _t) in pending(db).items()}  # SQLite's rows and the intake's
        missing = [i for i in reported if i not in present]
        assert not missing, f"round {it}: {len(missing)} reported events lost (seed {seed})"
        assert all(present[i] == s for i, s in reported.items()), f"round {it}: seq changed"
    with Outbox(db, site="main", device="crash-1") as ob:
        assert ob.recovery.moved_aside is None
        seqs = [r.seq for r in ob.next_batch(0, 10**7)]
        assert seqs == sorted(set(seqs))
    print(f"{ROUNDS} kills, {len(reported)} events reported recorded, {len(seqs)} rows, none lost")
