"""An alarm recorded while the agent starts gets its photo, or a ``snapshot_failed``: never silence.

The inputs are armed before the photo store is opened, so the window between
the two is real: a press as the agent comes up, a button held through a
restart ("active at start").  Each test holds the start in that window (the
``agent_started`` step, after the arming) until the press is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockPin

from agent.config import load_config
from agent.config.model import Config
from agent.daemon import Agent
from agent.notify import Notifier
from agent.outbox import Outbox
from agent.statefile import State
from tests.support.agentproc import write_config
from tests.support.broker import free_port
from tests.support.clocks import synced_clock
from tests.support.snapcam import SnapCamera
from tests.support.waiting import eventually

_PIN = 17


class _HeldPin(MockPin):  # type: ignore[misc]  # gpiozero has no type hints
    """A button held down as the agent starts: the pull-up the input sets does not lift it."""

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        self.drive_low()


class _StartWindow(Agent):
    """An agent whose start waits, after the inputs are armed, until a press is recorded.

    ``held_at_start`` drives the pin before the arming (a button held through a
    restart); otherwise the press comes once armed.  ``fail`` then ends the start
    there, before the cameras and photos are built.
    """

    held_at_start = False
    fail = False

    def _carry_alarms(self, before: State) -> None:
        super()._carry_alarms(before)  # the last step before the inputs are armed
        if self.held_at_start:
            self._factory.pin(_PIN, pin_class=_HeldPin)  # the input claims this pin

    def _record_started(self) -> None:
        assert self.inputs is not None
        assert self.recorder is not None
        recorder = self.recorder
        if not self.held_at_start:
            self.inputs.simulate("panic", active=True)
        eventually(lambda: _panic_id(recorder.recent()), 5, "the press recorded during start")
        if self.fail:
            raise RuntimeError("a part failed to start (the test's)")
        super()._record_started()


def _panic_id(recent: list[dict[str, Any]]) -> str | None:
    return next((e["id"] for e in recent if e["type"] == "panic"), None)


@pytest.fixture
def camera() -> Iterator[SnapCamera]:
    cam = SnapCamera(size=20_000).start()
    yield cam
    cam.stop()


def _config(tmp_path: Path, cam: SnapCamera) -> Config:
    return load_config(
        write_config(
            tmp_path,
            free_port(),  # no broker: photos and events stay on disk, where the test reads them
            device="start-photo",
            inputs=[{"name": "panic", "kind": "panic_button", "pin": _PIN, "debounce_ms": 0, "snapshot": ["gate-cam"]}],
            cameras=[{"name": "gate-cam", "kind": "http_snapshot", "url": cam.url, "timeout_s": 2}],
        )
    )


def _photo_of(agent: Agent, event_id: str) -> bool:
    return any(p.event_id == event_id for p in agent.photos.store.pending())


@pytest.mark.parametrize("held_at_start", [False, True], ids=["pressed-while-starting", "held-through-restart"])
def test_start_photos__an_alarm_recorded_during_start_gets_its_photo(
    tmp_path: Path, camera: SnapCamera, held_at_start: bool
) -> None:
    cfg = _config(tmp_path, camera)
    agent = _StartWindow(cfg, clock=synced_clock(), notifier=Notifier(env={}))
    agent.held_at_start = held_at_start
    with agent:
        agent.start()
        assert agent.recorder is not None
        early = _panic_id(agent.recorder.recent())
        assert early is not None
        eventually(lambda: _photo_of(agent, early), 5, "the photo of the alarm recorded during start")


def test_start_photos__a_start_failing_before_the_photos_reports_the_alarm_stopped(
    tmp_path: Path, camera: SnapCamera
) -> None:
    cfg = _config(tmp_path, camera)
    agent = _StartWindow(cfg, clock=synced_clock(), notifier=Notifier(env={}))
    agent.fail = True
    with agent, pytest.raises(RuntimeError, match="failed to start"):
        agent.start()
    assert agent.closed
    assert agent.photos is None
    with Outbox(cfg.outbox.path, site=cfg.device.site, device=cfg.device.id) as ob:
        bodies = [json.loads(r.payload) for r in ob.next_batch(0, 100)]
    panic = next(b["id"] for b in bodies if b["type"] == "panic")
    failed = [b for b in bodies if b["type"] == "snapshot_failed"]
    assert [(b["source"], b["data"]["event_id"], b["data"]["reason"]) for b in failed] == [
        ("gate-cam", panic, "stopped")
    ]
    assert camera.hits == 0
