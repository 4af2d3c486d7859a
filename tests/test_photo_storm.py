"""An alarm storm with a camera stuck on a still: the stills it cannot queue are reported off the inputs thread.

A hunt found each press beyond a camera's queue of stills
(``QUEUE_PER_CAMERA``) commit its ``snapshot_failed`` (reason ``busy``) on the
inputs thread, in the deferred step after the alarm's PUBLISH: up to the
recorder's write wait plus an fsync before the thread polled again, so the next
press waited behind a report about a photo.  The report is now stamped there
and committed on the chores thread, in the order the reports were made; none is
lost, the stuck still's own report and the queued stills' ``stopped`` included.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.events import EventType
from agent.notify import Notifier
from agent.recorder import Item
from agent.snapshots import QUEUE_PER_CAMERA
from tests.support.agentproc import write_config
from tests.support.camservers import HttpCamera
from tests.support.waiting import eventually

PRESSES = QUEUE_PER_CAMERA + 4  # one still stuck in the camera, eight queued, three busy


def test_photo_storm__busy_reports_are_committed_off_the_inputs_thread_in_order_and_none_lost(
    tmp_path: Path, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    camera = HttpCamera("hang").start()  # answers nothing until released: the first still blocks its worker
    inputs = [{"name": "panic", "kind": "panic_button", "pin": 17, "debounce_ms": 10, "snapshot": ["gate-cam"]}]
    cameras = [{"name": "gate-cam", "kind": "http_snapshot", "url": camera.url, "timeout_s": 2}]
    cfg = load_config(write_config(tmp_path, 1, device=device, inputs=inputs, cameras=cameras))  # no broker needed
    reports: list[tuple[str, Mapping[str, Any]]] = []  # (committing thread, data) per snapshot_failed
    try:
        with Agent(cfg, notifier=Notifier(env={})) as agent:
            agent.start()
            recorder, pins = agent.recorder, agent.inputs
            assert recorder is not None
            assert pins is not None
            real = recorder.record_many

            def spy(items: list[Item]) -> None:
                name = threading.current_thread().name
                reports.extend((name, data) for t, _, _, data in items if t is EventType.SNAPSHOT_FAILED)
                real(items)

            monkeypatch.setattr(recorder, "record_many", spy)

            def panics() -> list[str]:
                return [e["id"] for e in recorder.recent() if e["type"] == "panic"]

            for n in range(1, PRESSES + 1):
                pins.simulate("panic", active=True)
                eventually(lambda: len(panics()) == n, what=f"panic {n} recorded")
                pins.simulate("panic", active=False)
                eventually(lambda: pins.states()["panic"].state == "ok", what="the release")
            alarms = panics()[::-1]  # pressed first, first (recent() is newest first)
            busy = PRESSES - 1 - QUEUE_PER_CAMERA
            eventually(lambda: sum(d["reason"] == "busy" for _, d in list(reports)) == busy, what="the busy reports")
            camera.release.set()  # the stuck still ends; the agent stops with stills still queued
    finally:
        camera.stop()
    on_inputs = [(t, d["reason"]) for t, d in reports if t == "inputs"]
    assert on_inputs == [], f"snapshot_failed committed on the inputs thread: {on_inputs}"
    assert [d["event_id"] for _, d in reports if d["reason"] == "busy"] == alarms[-busy:], "busy reports out of order"
    reported = sorted(d["event_id"] for _, d in reports)
    assert reported == sorted(alarms), "each alarm's missing still reported exactly once"
