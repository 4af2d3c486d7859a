"""A crash between moving a corrupt outbox aside and the salvage commit loses none of its rows.

The child opens a damaged outbox and is SIGKILLed right after the file was
renamed aside (see recovery_child.py).  The next open must find the
moved-aside file and salvage it: the same rows as an uninterrupted recovery
of the same damage, and seq above all of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from agent.events import Event, EventType
from agent.outbox import Outbox
from tests.support.clocks import synced_clock

CHILD = Path(__file__).with_name("recovery_child.py")
ROOT = Path(__file__).resolve().parents[2]
CLOCK = synced_clock("crash-test")


def _damaged_outbox(path: Path, n: int = 200) -> int:
    with Outbox(path, site="main", device="crash-1") as ob:
        top = max(ob.put(Event.create(CLOCK, EventType.PANIC, "panic")) for _ in range(n))
    data = bytearray(path.read_bytes())
    data[-4096:] = b"\xff" * 4096  # wreck the last page, keep header and schema: quick_check fails
    path.write_bytes(bytes(data))
    return top


def _ids(ob: Outbox) -> set[str]:
    return {r.id for r in ob.next_batch(0, 10_000)}


def test_crash_after_move_aside__next_start_salvages_the_moved_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "outbox.db"
    path.parent.mkdir()
    top = _damaged_outbox(path)
    control = tmp_path / "control" / "outbox.db"
    control.parent.mkdir()
    shutil.copy(path, control)
    with Outbox(control, site="main", device="crash-1") as ob:  # the same damage, recovered without a crash
        want = _ids(ob)
    assert 0 < len(want) < 200

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, str(CHILD), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("MOVED "), line
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert not path.exists(), "the damaged file was moved aside before the kill"

    with Outbox(path, site="main", device="crash-1") as ob:
        assert _ids(ob) == want, "rows of the moved-aside file were lost to the crash"
        assert ob.recovery.moved_aside is not None
        assert ob.recovery.salvaged == len(want)
        assert ob.put(Event.create(CLOCK, EventType.PANIC, "panic")) > top
    with Outbox(path, site="main", device="crash-1") as ob:
        assert ob.recovery.moved_aside is None, "a salvaged file is salvaged once"
        assert _ids(ob) >= want
