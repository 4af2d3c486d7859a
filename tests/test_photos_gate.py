"""A still waits for its alarm's PUBACK (or GATE_S) before the camera is asked: the alarm never shares its moment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.photos import GATE_S, Photos
from tests.support.agentproc import write_config
from tests.support.snapcam import SnapCamera
from tests.support.waiting import eventually


def make(tmp_path: Path, cam: SnapCamera) -> Photos:
    cfg = load_config(
        write_config(
            tmp_path,
            1,
            device="gate-1",
            inputs=[{"name": "panic", "kind": "panic_button", "pin": 17, "snapshot": ["gate-cam"]}],
            cameras=[{"name": "gate-cam", "kind": "http_snapshot", "url": cam.url, "timeout_s": 2}],
        )
    )
    return Photos(cfg, wake=lambda: None, on_failed=lambda *a: None, locks=None, wall=time.time)


def test_gate__capture_starts_when_the_alarm_is_acknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.photos.GATE_S", 60.0)  # only the PUBACK can release it within the test
    cam = SnapCamera(size=20_000).start()
    photos = make(tmp_path, cam)
    try:
        photos.start()
        eid = "a" * 32
        entered = threading.Event()
        released = threading.Event()
        original = photos._wait_for_alarm

        def watched(event_id: str) -> None:
            entered.set()
            original(event_id)
            released.set()

        photos.snapshots._gate = watched
        photos.request(eid, "panic")
        assert entered.wait(5)
        assert cam.hits == 0  # the worker is at the gate: nothing asked of the camera yet
        photos.alarm_delivered(eid)
        assert released.wait(10)  # released by the PUBACK: the bound is 60 s here
        eventually(lambda: photos.status()["pending"] >= 1, what="the photo stored")
        assert photos.status()["pending"] == 1
        assert cam.hits == 1
    finally:
        photos.close()
        cam.stop()


def test_gate__a_lost_link_delays_the_capture_by_the_bound_only(tmp_path: Path) -> None:
    cam = SnapCamera(size=20_000).start()
    photos = make(tmp_path, cam)
    try:
        photos.start()
        t0 = time.monotonic()
        photos.request("b" * 32, "panic")  # no PUBACK will come
        eventually(lambda: photos.status()["pending"] >= 1, what="the photo stored after the bound")
        assert photos.status()["pending"] == 1
        assert time.monotonic() - t0 >= GATE_S
        assert "pending=1" in repr(photos)
    finally:
        photos.close()
        photos.close()  # idempotent
        cam.stop()
    assert repr(photos) == "<Photos closed>"
