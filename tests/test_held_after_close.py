"""An event whose commit was stuck through the recorder's close and failed then is stored or reported, never dropped silently.

``Inputs.close`` stops waiting for a commit stuck in the outbox after 5 s
(agent/inputs.py) so the rest of the stop runs; the recorder closes meanwhile.
When the stuck commit fails at last, its events are held, but no retry thread
is left to store them: they used to sit in memory until the process ended,
without a line in the log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.events import EventType
from agent.outbox import Outbox
from agent.recorder import Recorder
from tests.support.clocks import synced_clock

CLOCK = synced_clock()


class StuckThenFailing(Outbox):
    """The first commit hangs until the test lets go, then fails; later ones fail while ``broken``."""

    broken = True
    stuck: threading.Event
    unstick: threading.Event

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        if not self.stuck.is_set():
            self.stuck.set()
            self.unstick.wait(10.0)
            raise sqlite3.OperationalError("database is locked")
        if self.broken:
            raise sqlite3.OperationalError("database is locked")
        return super()._insert(rows, all_alarms=all_alarms)


@pytest.mark.parametrize("storage_back", [True, False], ids=["stored-at-last", "reported-lost"])
def test_held_after_close__a_commit_failing_after_the_stop_is_stored_or_reported(
    tmp_path: Path, storage_back: bool, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = StuckThenFailing(tmp_path / "outbox.db", site="main", device="gate-1")
    outbox.stuck, outbox.unstick = threading.Event(), threading.Event()
    recorder = Recorder(outbox, clock=CLOCK, site="main", device="gate-1", retry_s=60.0)
    press = threading.Thread(
        target=recorder.record, args=(EventType.CAMERA_FAULT, "cam", CLOCK.stamp(), {}), name="stuck-commit"
    )
    try:
        press.start()
        assert outbox.stuck.wait(10.0), "the commit never started"
        recorder.close()  # the stop goes on while the commit is stuck
        outbox.broken = not storage_back
        with caplog.at_level(logging.CRITICAL, logger="agent.recorder"):
            outbox.unstick.set()
            press.join(10.0)
        assert not press.is_alive()
        if storage_back:
            assert recorder.held_count() == 0
            assert [r.type for r in outbox.next_batch(0, 10)] == ["camera_fault"]
        else:
            assert recorder.held_count() == 1
            assert "not on disk" in caplog.text
            assert "stuck through the stop" in caplog.text
    finally:
        outbox.unstick.set()
        press.join(10.0)
        outbox.close()
