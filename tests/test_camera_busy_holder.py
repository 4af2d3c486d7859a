"""A probe judges the still holding the camera now, not the first still it found holding it.

A review found back-to-back stills, each within its budget, reported as one
stuck still and a false ``camera_fault``: the probe timed "busy" from the first
probe that found the camera held, and only a worker sampling the lock free
(about once a second) reset it, missing the short gaps between stills.  The
lock (:class:`CameraHold`) now records when its holder took it.
"""

from __future__ import annotations

import time

from agent.cameras import CameraHold, Cameras
from agent.config.model import CameraKind
from agent.events import EventType
from tests.test_camera_stuck import _cameras, _cfg, _Events

TIMEOUT_S = 0.01  # rtsp: a still may take 1.02 s, stuck after 2.04 s; a probe waits 1.02 s for the lock


def test_camera_hold__stamps_its_holder_and_clears_on_release() -> None:
    hold = CameraHold()
    assert hold.held_s() == 0.0
    with hold:
        since = hold.held_since
        assert since is not None
        assert hold.locked()
        assert not hold.acquire(timeout=0.01)
    assert not hold.locked()
    assert hold.held_since is None


def test_camera_busy_holder__back_to_back_stills_within_budget_are_not_stuck() -> None:
    events = _Events()
    cams: Cameras = _cameras(_cfg(CameraKind.RTSP, "rtsp://127.0.0.1:9/never-probed", TIMEOUT_S), events)
    hold = cams.locks()["door"]
    try:
        assert hold.acquire(timeout=5)  # the first still
        first = cams.probe_now("door")
        assert first.detail.startswith("not probed: busy with a still"), first.detail
        hold.release()  # the first still done; the next one takes the camera at once
        assert hold.acquire(timeout=5)
        time.sleep(0.3)  # the second still 0.3 s in: nothing to wait for, time to pass
        second = cams.probe_now("door")  # over 2.04 s after the first probe, 1.3 s into this still
        assert second.detail.startswith("not probed: busy with a still for 1."), second.detail
        assert events.of(EventType.CAMERA_FAULT) == []
        assert cams.states()["door"]["ok"] is None
    finally:
        if hold.locked():
            hold.release()
        cams.close()
