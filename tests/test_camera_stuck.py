"""A still stuck holding its camera: the health probe must not call the camera healthy for ever.

The capture thread of a still shares a lock with the camera's health probe.  A
still stuck in a hung driver or an endless HTTP read kept the lock, every probe
after it was skipped as "busy" (no failure), and the status said ``ok: true``
with no ``camera_fault`` however long the camera was dead.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.cameras import Cameras
from agent.config.model import CameraConfig, CameraKind
from agent.events import EventType, Stamp
from tests.support.camservers import RtspServer
from tests.support.clocks import synced_clock
from tests.support.waiting import eventually, never

FAULT, RESTORED = EventType.CAMERA_FAULT, EventType.CAMERA_RESTORED


def _cfg(kind: CameraKind, url: str | None, timeout_s: float) -> CameraConfig:
    """Built directly: validation would refuse the short timeouts that keep these tests fast."""
    return CameraConfig(
        name="door",
        kind=kind,
        url=url,
        timeout_s=timeout_s,
        probe_interval_s=0.05,
        fail_after=2,
        username=None,
        password=None,
        auth="basic",
        camera_num=0,
    )


class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[EventType, str]] = []
        self._lock = threading.Lock()

    def emit(self, etype: EventType, _name: str, _stamp: Stamp, data: Any) -> None:
        with self._lock:
            self.seen.append((etype, str(data["detail"])))

    def of(self, etype: EventType) -> list[str]:
        with self._lock:
            return [d for t, d in self.seen if t is etype]


@pytest.fixture
def rtsp() -> Iterator[RtspServer]:
    srv = RtspServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def _cameras(cfg: CameraConfig, events: _Events) -> Cameras:
    return Cameras((cfg,), clock=synced_clock("0" * 32), emit=events.emit, on_change=lambda: None)


def test_camera_stuck__a_still_holding_it_past_twice_its_budget_is_a_fault_and_recovers(rtsp: RtspServer) -> None:
    events = _Events()
    cams = _cameras(_cfg(CameraKind.RTSP, rtsp.url, timeout_s=0.05), events)  # still budget 1.1 s: stuck after 2.2 s
    lock = cams.locks()["door"]
    try:
        cams.start()
        eventually(lambda: cams.states()["door"]["ok"] is True, 5.0, "the first good probe")
        assert lock.acquire(timeout=5)  # a still's capture thread, stuck in its driver
        try:
            faults = eventually(lambda: events.of(FAULT), 8.0, "a camera_fault while a still holds the camera")
        finally:
            lock.release()
        m = re.fullmatch(r"a still has held the camera for (\d+) s: camera or network stuck", faults[0])
        assert m, faults
        assert int(m[1]) >= 2
        assert cams.states()["door"]["ok"] is False
        eventually(lambda: events.of(RESTORED), 5.0, "camera_restored once the still let go")
        assert cams.states()["door"]["ok"] is True
    finally:
        cams.close()


def test_camera_stuck__a_still_within_its_budget_counts_no_failure(rtsp: RtspServer) -> None:
    events = _Events()
    cams = _cameras(_cfg(CameraKind.RTSP, rtsp.url, timeout_s=0.05), events)
    lock = cams.locks()["door"]
    try:
        cams.start()
        eventually(lambda: cams.states()["door"]["ok"] is True, 5.0, "the first good probe")
        assert lock.acquire(timeout=5)
        try:
            eventually(lambda: cams.states()["door"]["detail"].startswith("not probed: busy with a still"), 5.0)
        finally:
            lock.release()
        seen = len(rtsp.requests)
        eventually(lambda: len(rtsp.requests) > seen, 5.0, "probes again once the still let go")
        eventually(lambda: cams.states()["door"]["detail"].startswith("RTSP/1.0 200"), 5.0)
        assert cams.states()["door"]["ok"] is True
        assert events.seen == []
    finally:
        cams.close()


def test_camera_stuck__the_busy_detail_says_how_long_the_camera_has_been_held() -> None:
    """It said "for 0.3 s" (the probe's own wait) round after round, however long the still had held it.

    Meanwhile the worker shows progress (the daemon's watchdog reads it), and no failure is counted.
    """
    events = _Events()
    cams = _cameras(_cfg(CameraKind.PICAMERA2, None, timeout_s=0.3), events)  # stuck only after 4.6 s
    lock = cams.locks()["door"]
    assert lock.acquire(timeout=5)
    try:
        cams.start()

        def held_s() -> float | None:
            m = re.fullmatch(r"not probed: busy with a still for ([\d.]+) s", cams.states()["door"]["detail"])
            return float(m[1]) if m and float(m[1]) >= 1.0 else None

        eventually(held_s, 5.0, lambda: f"the held time growing; detail {cams.states()['door']['detail']!r}")
        never(lambda: time.monotonic() - cams.progress > 1.0, 1.0, "the camera worker showing no progress for 1 s")
        assert cams.states()["door"]["ok"] is None
        assert events.seen == []
    finally:
        cams.close()
        lock.release()
