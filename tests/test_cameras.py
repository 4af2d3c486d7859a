"""Camera probes against real loopback cameras, and picamera2 faked at its import boundary."""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.camera_verdicts import ProbeResult
from agent.cameras import Cameras
from agent.camprobes import PiCameraProbe, probe_http
from agent.config.model import CameraConfig, CameraKind, Secret
from agent.errors import CameraError
from agent.events import Clock, Event, EventType, Stamp, with_seq
from agent.rtsp_probe import probe_rtsp
from tests.support.camservers import HttpCamera, RtspServer
from tests.support.clocks import synced_clock
from tests.support.contract import Validate
from tests.support.waiting import eventually

PASSWORD = "s3cret-Pa55"
SECRET = Secret(PASSWORD, Path("/etc/campus-agent/door-cam.pass"))
FAULT, RESTORED = EventType.CAMERA_FAULT, EventType.CAMERA_RESTORED


def cam_cfg(kind: CameraKind, url: str | None = None, **kw: Any) -> CameraConfig:
    """Built directly: validation would refuse the short intervals that keep these tests fast."""
    base: dict[str, Any] = {
        "name": "door",
        "kind": kind,
        "url": url,
        "timeout_s": 0.5,
        "probe_interval_s": 0.05,
        "fail_after": 2,
        "username": None,
        "password": None,
        "auth": "basic",
        "camera_num": 0,
    }
    return CameraConfig(**(base | kw))


def assert_one_line(r: ProbeResult) -> None:
    assert len(r.detail) <= 160
    assert "\n" not in r.detail
    assert PASSWORD not in r.detail
    assert r.elapsed_ms >= 0


class Recorder:
    """Collects what Cameras emits, as the daemon's durable put would receive it."""

    def __init__(self) -> None:
        self.events: list[tuple[EventType, str, Stamp, dict[str, Any]]] = []
        self.changes = 0
        self._lock = threading.Lock()

    def emit(self, etype: EventType, name: str, stamp: Stamp, data: Any) -> None:
        with self._lock:
            self.events.append((etype, name, stamp, dict(data)))

    def on_change(self) -> None:
        with self._lock:
            self.changes += 1

    def types(self) -> list[EventType]:
        with self._lock:
            return [e[0] for e in self.events]


@pytest.fixture
def clock() -> Clock:
    return synced_clock("0" * 32)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_cameras(clock: Clock, recorder: Recorder) -> Iterator[Callable[..., Cameras]]:
    made: list[Cameras] = []

    def make(*configs: CameraConfig) -> Cameras:
        cams = Cameras(configs, clock=clock, emit=recorder.emit, on_change=recorder.on_change)
        made.append(cams)
        return cams

    try:
        yield make
    finally:
        for cams in made:
            cams.close()


@pytest.fixture
def http_camera() -> Iterator[HttpCamera]:
    cam = HttpCamera().start()
    try:
        yield cam
    finally:
        cam.stop()


@pytest.fixture
def rtsp_server() -> Iterator[RtspServer]:
    srv = RtspServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- HTTP snapshot ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "login", "auth", "ok", "detail"),
    [
        ("jpeg", None, "basic", True, r"^200 image/jpeg 20\d\d bytes in \d+ ms$"),
        ("basic", PASSWORD, "basic", True, r"^200 image/jpeg 20\d\d bytes in \d+ ms$"),
        ("digest", PASSWORD, "digest", True, r"^200 image/jpeg 20\d\d bytes in \d+ ms$"),
        (
            "basic",
            "wrong",
            "basic",
            False,
            r"^HTTP 401 from 127\.0\.0\.1: check the camera username and password file$",
        ),
        (
            "digest",
            "wrong",
            "digest",
            False,
            r"^HTTP 401 from 127\.0\.0\.1: check the camera username and password file$",
        ),
        (
            "digest",
            None,
            "basic",
            False,
            r"^HTTP 401 from 127\.0\.0\.1: the camera wants a login; set username and password_file$",
        ),
        (
            "error500",
            None,
            "basic",
            False,
            r"^HTTP 500 from 127\.0\.0\.1: the camera reports an internal error; power-cycle it$",
        ),
        (
            "garbage",
            None,
            "basic",
            False,
            r"^not a JPEG \(starts 3c 68 74 6d, no FF D8 marker\) from 127\.0\.0\.1: check the snapshot URL$",
        ),
        (
            "html",
            None,
            "basic",
            False,
            r"^not a JPEG \(content type text/html, 36 bytes\) from 127\.0\.0\.1: check the snapshot URL$",
        ),
        ("truncated", None, "basic", False, r"^truncated JPEG \(1035 bytes, no FF D9 end marker\) from 127\.0\.0\.1"),
        (
            "cut",
            None,
            "basic",
            False,
            r"^127\.0\.0\.1:\d+ dropped the connection mid-answer: camera rebooting or overloaded$",
        ),
        ("raw", None, "basic", False, r"^not an HTTP answer from 127\.0\.0\.1:\d+: check the port in the URL$"),
        (
            "hang",
            None,
            "basic",
            False,
            r"^no answer from 127\.0\.0\.1:\d+ within 0\.5 s: camera off, hung or unreachable$",
        ),
    ],
)
def test_probe_http__answers(
    http_camera: HttpCamera, mode: str, login: str | None, auth: str, ok: bool, detail: str
) -> None:
    http_camera.mode = mode
    creds = {} if login is None else {"username": "tech", "password": Secret(login, Path("/p")), "auth": auth}
    r = probe_http(cam_cfg(CameraKind.HTTP_SNAPSHOT, http_camera.url, **creds))
    assert r.ok is ok, r.detail
    assert re.search(detail, r.detail), r.detail
    assert_one_line(r)


def test_probe_http__connection_refused(closed_port: int) -> None:
    r = probe_http(cam_cfg(CameraKind.HTTP_SNAPSHOT, f"http://127.0.0.1:{closed_port}/snap.jpg"))
    assert r == ProbeResult(
        ok=False,
        detail=f"connection refused by 127.0.0.1:{closed_port}: camera off or wrong port",
        elapsed_ms=r.elapsed_ms,
    )


# ---- RTSP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "ok", "detail"),
    [
        ("ok", True, r"^RTSP/1\.0 200 OK in \d+ ms$"),
        ("not_found", False, r"^RTSP/1\.0 404 Not Found from 127\.0\.0\.1: check the stream path in the URL$"),
        (
            "http",
            False,
            r"^not an RTSP answer from 127\.0\.0\.1:\d+ \(got 'HTTP/1\.1 400 Bad Request'\): check the port in the URL$",
        ),
        (
            "close",
            False,
            r"^127\.0\.0\.1:\d+ closed the connection without answering: not an RTSP server\? check the port$",
        ),
        ("hang", False, r"^no answer from 127\.0\.0\.1:\d+ within 0\.5 s: camera off, hung or unreachable$"),
    ],
)
def test_probe_rtsp__answers(rtsp_server: RtspServer, mode: str, ok: bool, detail: str) -> None:
    rtsp_server.mode = mode
    r = probe_rtsp(cam_cfg(CameraKind.RTSP, rtsp_server.url))
    assert r.ok is ok
    assert re.search(detail, r.detail), r.detail
    assert rtsp_server.requests == [f"OPTIONS {rtsp_server.url} RTSP/1.0"]
    assert_one_line(r)


def test_probe_rtsp__connection_refused(closed_port: int) -> None:
    r = probe_rtsp(cam_cfg(CameraKind.RTSP, f"rtsp://127.0.0.1:{closed_port}/live"))
    assert (r.ok, r.detail) == (False, f"connection refused by 127.0.0.1:{closed_port}: camera off or wrong port")


# ---- hysteresis, events and status -----------------------------------------------------------


def test_cameras__states_before_first_probe(make_cameras: Callable[..., Cameras], closed_port: int) -> None:
    cams = make_cameras(cam_cfg(CameraKind.RTSP, f"rtsp://127.0.0.1:{closed_port}/"))
    assert cams.states() == {"door": {"ok": None, "checked": None, "detail": "not checked yet"}}
    with pytest.raises(CameraError, match=r"^no camera named 'gate'; configured: door$"):
        cams.probe_now("gate")


def test_cameras__one_fault_per_outage_one_restored_per_recovery(
    make_cameras: Callable[..., Cameras],
    rtsp_server: RtspServer,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    validate: Validate,
    clock: Clock,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.cameras")
    cams = make_cameras(cam_cfg(CameraKind.RTSP, rtsp_server.url, fail_after=3))
    assert cams.probe_now("door").ok
    assert (cams.states()["door"]["ok"], recorder.changes) == (True, 1)
    rtsp_server.stop()
    for _ in range(2):
        assert not cams.probe_now("door").ok
    state = cams.states()["door"]
    assert (state["ok"], recorder.types(), recorder.changes) == (True, [], 1), "below fail_after nothing flips"
    assert state["detail"].startswith("connection refused by 127.0.0.1:")
    for _ in range(3):
        cams.probe_now("door")
    assert (cams.states()["door"]["ok"], recorder.types(), recorder.changes) == (False, [FAULT], 2)
    rtsp_server.start()
    for _ in range(3):
        assert cams.probe_now("door").ok
    assert (cams.states()["door"]["ok"], recorder.types(), recorder.changes) == (True, [FAULT, RESTORED], 3)

    (_, name, _, fault), (_, _, _, restored) = recorder.events
    assert name == "door"
    assert fault == {"kind": "rtsp", "failures": 3, "detail": fault["detail"]}
    assert fault["detail"].startswith("connection refused by 127.0.0.1:")
    assert (restored["kind"], restored["failures"]) == ("rtsp", 5)
    assert restored["down_s"] >= 0
    assert re.match(r"^RTSP/1\.0 200 OK in \d+ ms$", restored["detail"])
    levels = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if "FAULT" in r.getMessage() or "restored" in r.getMessage()
    ]
    assert [lv for lv, _ in levels] == ["WARNING", "INFO"]
    assert "camera off or wrong port" in levels[0][1]
    for etype, source, stamp, data in recorder.events:
        event = Event.create(clock, etype, source, at=stamp, data=data)
        validate("event", json.loads(with_seq(event.body("main", "gate-north-1"), 1)))


def test_cameras__first_probes_fail_then_fault_without_ever_ok(
    make_cameras: Callable[..., Cameras],
    closed_port: int,
    recorder: Recorder,
) -> None:
    cams = make_cameras(cam_cfg(CameraKind.RTSP, f"rtsp://127.0.0.1:{closed_port}/", fail_after=2))
    cams.probe_now("door")
    state = cams.states()["door"]
    assert state["ok"] is None, "not ok before any success, not faulted before fail_after"
    assert state["checked"] is not None
    cams.probe_now("door")
    assert (cams.states()["door"]["ok"], recorder.types(), recorder.changes) == (False, [FAULT], 1)


def _outage(http_camera: HttpCamera, kind: str) -> Callable[[], None]:
    if kind == "password":
        return lambda: setattr(http_camera, "password", "changed-on-the-camera")
    return lambda: setattr(http_camera, "mode", kind)


@pytest.mark.parametrize(
    ("outage", "detail"),
    [
        ("error500", r"^HTTP 500 from 127\.0\.0\.1: the camera reports an internal error; power-cycle it$"),
        ("garbage", r"^not a JPEG \(starts 3c 68 74 6d"),
        ("hang", r"^no answer from 127\.0\.0\.1:\d+ within 0\.5 s"),
        ("password", r"^HTTP 401 from 127\.0\.0\.1: check the camera username and password file$"),
    ],
)
def test_cameras__http_outages_on_schedule(
    make_cameras: Callable[..., Cameras],
    http_camera: HttpCamera,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    outage: str,
    detail: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    http_camera.mode = "digest"
    cams = make_cameras(
        cam_cfg(CameraKind.HTTP_SNAPSHOT, http_camera.url, username="tech", password=SECRET, auth="digest")
    )
    cam = cams._cams["door"]
    cams.start()
    for round_ in (1, 2):
        eventually(lambda: cams.states()["door"]["ok"] is True, what="the camera to be ok")
        _outage(http_camera, outage)()
        eventually(lambda: len(recorder.events) == 2 * round_ - 1, what="camera_fault")
        eventually(lambda: cam.failures >= 3, what="more failed probes during the outage")
        state = cams.states()["door"]
        assert state["ok"] is False
        assert re.search(detail, state["detail"]), state["detail"]
        http_camera.mode, http_camera.password = "digest", PASSWORD
        eventually(lambda: len(recorder.events) == 2 * round_, what="camera_restored")
        hits = http_camera.hits
        eventually(lambda: http_camera.hits >= hits + 3, what="more good probes after the recovery")
    assert recorder.types() == [FAULT, RESTORED, FAULT, RESTORED]
    assert recorder.changes == 5  # None->ok, then ok->fault->ok twice
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in json.dumps(e[3]) for e in recorder.events)


def test_cameras__rtsp_server_goes_away_and_comes_back(
    make_cameras: Callable[..., Cameras],
    rtsp_server: RtspServer,
    recorder: Recorder,
) -> None:
    cams = make_cameras(cam_cfg(CameraKind.RTSP, rtsp_server.url, timeout_s=2))
    cam = cams._cams["door"]
    cams.start()
    eventually(lambda: cams.states()["door"]["ok"] is True, what="the RTSP camera to be ok")
    rtsp_server.stop()
    eventually(lambda: recorder.types() == [FAULT], what="camera_fault")
    eventually(lambda: cam.failures >= 5, what="more failed probes while it is away")
    assert (
        cams.states()["door"]["detail"]
        == f"connection refused by 127.0.0.1:{rtsp_server.port}: camera off or wrong port"
    )
    rtsp_server.start()
    eventually(lambda: recorder.types() == [FAULT, RESTORED], what="camera_restored")
    seen = len(rtsp_server.requests)
    eventually(lambda: len(rtsp_server.requests) >= seen + 3, what="more good probes")
    assert recorder.types() == [FAULT, RESTORED]
    assert re.match(r"^RTSP/1\.0 200 OK in \d+ ms$", cams.states()["door"]["detail"])


# ---- picamera2, faked at its import boundary ---------------------------------------------------


def frame(seed: int, size: int = 64 * 48 * 3) -> bytes:
    return random.Random(seed).randbytes(size)


DARK = bytes(2 + i % 3 for i in range(64 * 48 * 3))  # mean 3/255: a lens under a sticker


class Frame:
    """What capture_array hands back on a Pi is a numpy array; all the probe may use is tobytes()."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def tobytes(self) -> bytes:
        return self.data


class FakePi:
    """State shared with a fake ``picamera2`` module put into ``sys.modules``."""

    def __init__(
        self,
        *,
        cameras: tuple[dict[str, Any], ...] = ({"Model": "imx708", "Num": 0},),
        frames: tuple[Any, ...] = (),
        open_error: str | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.cameras = cameras
        self.frames = [Frame(f) if isinstance(f, bytes) else f for f in frames]
        self.open_error = open_error
        self.gate = gate
        self.opened = self.closed = self.captures = 0
        self.capturing = threading.Event()

    def module(self) -> types.ModuleType:
        fake = self

        class Picamera2:
            @staticmethod
            def global_camera_info() -> list[dict[str, Any]]:
                return [dict(c) for c in fake.cameras]

            def __init__(self, camera_num: int = 0) -> None:
                if fake.open_error:
                    raise RuntimeError(fake.open_error)
                fake.opened += 1
                self.num = camera_num

            def create_still_configuration(self, main: dict[str, Any] | None = None, **_kw: Any) -> dict[str, Any]:
                return {"main": main}

            def configure(self, config: dict[str, Any]) -> None:
                assert config["main"]["size"] == (320, 240)

            def start(self) -> None:
                return

            def capture_array(self, name: str = "main") -> Any:
                assert name == "main"
                fake.captures += 1
                if fake.gate is not None:
                    fake.capturing.set()
                    fake.gate.wait()
                return fake.frames.pop(0) if len(fake.frames) > 1 else fake.frames[0]

            def stop(self) -> None:
                return

            def close(self) -> None:
                fake.closed += 1

        mod = types.ModuleType("picamera2")
        mod.Picamera2 = Picamera2  # type: ignore[attr-defined]
        return mod


@pytest.fixture
def fake_pi(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakePi]:
    def install(**kw: Any) -> FakePi:
        fake = FakePi(**kw)
        monkeypatch.setitem(sys.modules, "picamera2", fake.module())
        return fake

    return install


@pytest.mark.parametrize(
    ("fake", "cfg", "ok", "detail"),
    [
        ({"frames": (frame(1),)}, {}, True, r"^imx708 still 320x240 mean 1[23]\d/255 in \d+ ms$"),
        ({"frames": (bytearray(frame(2)),)}, {}, True, r"^imx708 still 320x240 mean 1[23]\d/255 in \d+ ms$"),
        ({"frames": (DARK, DARK, frame(3))}, {}, True, r"^imx708 still"),  # exposure settling, not covered
        ({"cameras": ()}, {}, False, r"^no camera found by libcamera: check the ribbon cable"),
        (
            {"frames": (frame(4),)},
            {"camera_num": 1},
            False,
            r"^camera 1 not found: libcamera lists 1; check camera_num",
        ),
        ({"frames": (DARK,)}, {}, False, r"^covered: frame is uniformly dark \(mean 3/255\); check the lens"),
        (
            {"open_error": "Camera __init__ sequence did not complete."},
            {},
            False,
            r"^camera 0 \(imx708\) cannot be opened \(Camera __init__ sequence did not complete\.\): another program",
        ),
    ],
)
def test_picamera__probe(
    fake_pi: Callable[..., FakePi],
    make_cameras: Callable[..., Cameras],
    fake: dict[str, Any],
    cfg: dict[str, Any],
    ok: bool,
    detail: str,
) -> None:
    pi = fake_pi(**fake)
    r = make_cameras(cam_cfg(CameraKind.PICAMERA2, **cfg)).probe_now("door")
    assert r.ok is ok
    assert re.search(detail, r.detail), r.detail
    assert pi.opened == pi.closed, "the camera is released after every probe"
    assert_one_line(r)


def test_picamera__frozen_frame(fake_pi: Callable[..., FakePi]) -> None:
    fake_pi(frames=(frame(5), frame(6), frame(6), frame(7)))
    probe = PiCameraProbe(cam_cfg(CameraKind.PICAMERA2))
    results = [probe.probe() for _ in range(4)]
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].detail.startswith("frozen: frame identical to the previous one")


def test_picamera__not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail, as on a box without it
    r = PiCameraProbe(cam_cfg(CameraKind.PICAMERA2)).probe()
    assert not r.ok
    assert r.detail.startswith("picamera2 is not installed")


def test_picamera__capture_timeout_blocks_nothing(
    fake_pi: Callable[..., FakePi],
    make_cameras: Callable[..., Cameras],
    rtsp_server: RtspServer,
    recorder: Recorder,
    clock: Clock,
) -> None:
    gate = threading.Event()
    pi = fake_pi(frames=(frame(8), frame(9)), gate=gate)
    cams = make_cameras(
        cam_cfg(CameraKind.PICAMERA2, name="pi", timeout_s=0.2), cam_cfg(CameraKind.RTSP, rtsp_server.url, timeout_s=2)
    )
    try:
        cams.start()
        eventually(lambda: recorder.types() == [FAULT], what="camera_fault from the hung camera")
        t0 = time.monotonic()
        states = cams.states()
        assert time.monotonic() - t0 < 2.0, "states() must not wait for a hung probe"  # it hangs until released
        assert states["pi"]["ok"] is False
        assert re.match(
            r"^no still from camera 0 within 0\.2 s: camera or driver hung; reboot the Pi", states["pi"]["detail"]
        )
        seen = len(rtsp_server.requests)
        eventually(lambda: len(rtsp_server.requests) >= seen + 5, what="the other camera to keep probing")
        assert cams.states()["door"]["ok"] is True
        assert pi.opened == 1, "no second probe is piled onto a hung one"
        assert clock.mono() - cams.progress < 5.0, "the worker keeps showing progress"  # a stuck one stops for good
        gate.set()
        eventually(lambda: recorder.types() == [FAULT, RESTORED], what="camera_restored once the driver recovers")
        assert [e[1] for e in recorder.events] == ["pi", "pi"]
    finally:
        gate.set()


def test_cameras__close_does_not_wait_for_a_hung_probe(
    fake_pi: Callable[..., FakePi],
    clock: Clock,
    recorder: Recorder,
) -> None:
    gate = threading.Event()
    pi = fake_pi(frames=(frame(10),), gate=gate)
    cams = Cameras(
        (cam_cfg(CameraKind.PICAMERA2, timeout_s=30),), clock=clock, emit=recorder.emit, on_change=recorder.on_change
    )
    try:
        cams.start()
        assert pi.capturing.wait(5), "the probe should have started"
        t0 = time.monotonic()
        cams.close()
        cams.close()
        assert time.monotonic() - t0 < 10.0  # a third of the probe's 30 s timeout
        assert repr(cams) == "<Cameras closed>"
        assert recorder.types() == []
    finally:
        gate.set()


def test_cameras__imports_nothing_it_does_not_need(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from agent.cameras import Cameras
        from agent.config.model import CameraConfig, CameraKind
        from agent.events import Clock

        def cfg(name, kind, url=None):
            return CameraConfig(name=name, kind=kind, url=url, timeout_s=0.5, probe_interval_s=60, fail_after=1,
                                username=None, password=None, auth="basic", camera_num=0)

        cams = Cameras((cfg("pi", CameraKind.PICAMERA2), cfg("door", CameraKind.RTSP, "rtsp://127.0.0.1:9/")),
                       clock=Clock(synced=lambda: True, boot_id="x"), emit=lambda *a: None, on_change=lambda: None)
        assert "picamera2" not in sys.modules
        print(cams.probe_now("pi").detail)
        print(cams.probe_now("door").ok)
        assert "requests" not in sys.modules, "requests loaded without an HTTP camera"
        assert "numpy" not in sys.modules
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("picamera2 is not installed")


def test_cameras__one_stuck_worker_shows_in_progress_although_the_others_go_on(
    clock: Clock, rtsp_server: RtspServer
) -> None:
    """Every worker wrote one shared progress time: a worker stuck in its callback was hidden by the others."""
    release = threading.Event()

    def emit(etype: EventType, name: str, stamp: Stamp, data: Any) -> None:
        if name == "gone":
            release.wait(10.0)  # a callback that never returns (a deadlock in the daemon's put)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"rtsp://127.0.0.1:{s.getsockname()[1]}/stream"
    cams = Cameras(
        (
            cam_cfg(CameraKind.RTSP, closed, name="gone", timeout_s=0.2, fail_after=1),
            cam_cfg(CameraKind.RTSP, rtsp_server.url, name="door", timeout_s=0.2),
        ),
        clock=clock,
        emit=emit,
        on_change=lambda: None,
    )
    try:
        cams.start()
        eventually(lambda: cams.states()["door"]["ok"] is True, what="the healthy camera probed")
        eventually(lambda: clock.mono() - cams.progress > 1.5, 8.0, "the stuck worker seen as making no progress")
        assert cams.states()["door"]["ok"] is True
    finally:
        release.set()
        cams.close()
