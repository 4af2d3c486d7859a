"""Alarm stills: loopback HTTP cameras, picamera2 faked at its import boundary, and the snapshot config keys."""

from __future__ import annotations

import io
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import schema
from agent.config.marked import load_marked
from agent.config.model import CameraConfig, CameraKind, Secret
from agent.config.reader import Ctx, Section
from agent.config.snapshots import CAMERA_KEYS, INPUT_KEYS, SnapshotsConfig, parse_snapshot_config
from agent.photostore import PhotoStore
from agent.snapshots import QUEUE_PER_CAMERA, Snapshots
from tests.support.snapcam import SnapCamera, make_jpeg
from tests.support.waiting import eventually

PASSWORD = "s3cret-Pa55"
SECRET = Secret(PASSWORD, Path("/etc/campus-agent/gate-cam.pass"))


def cam_cfg(kind: CameraKind = CameraKind.HTTP_SNAPSHOT, url: str | None = None, **kw: Any) -> CameraConfig:
    """Built directly: validation would refuse the short timeouts that keep these tests fast."""
    base: dict[str, Any] = {
        "name": "gate-cam",
        "kind": kind,
        "url": url,
        "timeout_s": 0.5,
        "probe_interval_s": 60,
        "fail_after": 3,
        "username": None,
        "password": None,
        "auth": "basic",
        "camera_num": 0,
    }
    return CameraConfig(**(base | kw))


def snap_cfg(cameras: tuple[str, ...] = ("gate-cam",), **kw: Any) -> SnapshotsConfig:
    base: dict[str, Any] = {
        "max_kb": 400,
        "max_mb": 50.0,
        "width": 1280,
        "height": 720,
        "quality": 80,
        "triggers": (("panic", cameras),),
    }
    return SnapshotsConfig(**(base | kw))


class Outcome:
    """What the daemon would see: stored photos wake the sender, failures become snapshot_failed events."""

    def __init__(self) -> None:
        self.stored = 0
        self.failed: list[tuple[str, str, str, str]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()  # the snapshot threads write, the test reads

    def on_stored(self) -> None:
        with self.lock:
            self.stored += 1
            self.threads.add(threading.current_thread().name)

    def on_failed(self, event_id: str, camera: str, reason: str, detail: str) -> None:
        with self.lock:
            self.failed.append((event_id, camera, reason, detail))
            self.threads.add(threading.current_thread().name)

    def wait(self, n: int, timeout: float = 20.0) -> None:
        eventually(
            lambda: self.stored + len(self.failed) >= n,
            timeout,
            lambda: f"{n} outcomes; got {self.stored} stored, {self.failed}",
        )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PhotoStore]:
    with PhotoStore(tmp_path / "photos.db", max_mb=5) as s:
        yield s


@pytest.fixture
def snapcam() -> Iterator[Callable[..., SnapCamera]]:
    started: list[SnapCamera] = []

    def start(mode: str = "jpeg", **kw: Any) -> SnapCamera:
        cam = SnapCamera(mode, **kw).start()
        started.append(cam)
        return cam

    yield start
    for cam in started:
        cam.stop()


@pytest.fixture
def shoot(store: PhotoStore) -> Iterator[Callable[..., tuple[Snapshots, Outcome]]]:
    made: list[Snapshots] = []

    def make(*cams: CameraConfig, cfg: SnapshotsConfig | None = None, **kw: Any) -> tuple[Snapshots, Outcome]:
        out = Outcome()
        snaps = Snapshots(
            cams,
            cfg or snap_cfg(tuple(c.name for c in cams)),
            store,
            on_stored=out.on_stored,
            on_failed=out.on_failed,
            **kw,
        )
        snaps.start()
        made.append(snaps)
        return snaps, out

    yield make
    for s in made:
        s.close()


# ---- HTTP snapshot cameras ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "login"),
    [
        ("jpeg", {}),
        ("basic", {"username": "tech", "password": SECRET}),
        ("digest", {"username": "tech", "password": SECRET, "auth": "digest"}),
    ],
)
def test_snapshots__http_still_is_stored(
    snapcam: Callable[..., SnapCamera],
    shoot: Callable[..., tuple[Snapshots, Outcome]],
    store: PhotoStore,
    mode: str,
    login: dict[str, Any],
) -> None:
    cam = snapcam(mode)
    snaps, out = shoot(cam_cfg(url=cam.url, **login))
    assert snaps.request("e1", "panic") == 1
    out.wait(1)
    assert out.failed == []
    [photo] = store.pending()
    assert (photo.event_id, photo.camera, photo.part, photo.parts) == ("e1", "gate-cam", 1, 1)
    assert photo.jpeg == cam.jpeg
    assert len(photo.jpeg) == 200_000
    assert out.threads == {"snapshot-gate-cam"}, "taken and stored on the camera's own worker"


@pytest.mark.parametrize(
    ("mode", "kw", "reason", "detail"),
    [
        ("basic", {}, "login", "HTTP 401 from gate-cam: set username and password_file"),
        (
            "digest",
            {"username": "tech", "password": Secret("wrong", Path("x")), "auth": "digest"},
            "login",
            "HTTP 401 from gate-cam: check the camera's username and password_file",
        ),
        ("error500", {}, "http_error", "HTTP 500 from gate-cam"),
        ("hang", {}, "timeout", "no still from gate-cam within 0.5 s"),
        ("html", {}, "not_jpeg", "gate-cam sent no JPEG (starts 3c 68 74 6d, no FF D8 marker); check the snapshot URL"),
        ("truncated", {}, "not_jpeg", "gate-cam sent no JPEG"),
    ],
)
def test_snapshots__http_failure_says_why(
    snapcam: Callable[..., SnapCamera],
    shoot: Callable[..., tuple[Snapshots, Outcome]],
    store: PhotoStore,
    mode: str,
    kw: dict[str, Any],
    reason: str,
    detail: str,
) -> None:
    cam = snapcam(mode)
    snaps, out = shoot(cam_cfg(url=cam.url, **kw))
    snaps.request("e1", "panic")
    out.wait(1)
    [(event_id, camera, got_reason, got_detail)] = out.failed
    assert (event_id, camera, got_reason) == ("e1", "gate-cam", reason)
    assert got_detail.startswith(detail)
    assert PASSWORD not in got_detail
    assert store.pending() == []


def test_snapshots__http_truncated_from_the_real_jpeg_mode(
    snapcam: Callable[..., SnapCamera], shoot: Callable[..., tuple[Snapshots, Outcome]]
) -> None:
    cam = snapcam("jpeg", size=2000)
    cam.jpeg = cam.jpeg[:1000]
    snaps, out = shoot(cam_cfg(url=cam.url))
    snaps.request("e1", "panic")
    out.wait(1)
    assert out.failed[0][2:] == (
        "not_jpeg",
        "gate-cam sent no JPEG (1000 bytes with no FF D9 end marker (truncated)); check the snapshot URL",
    )


def test_snapshots__over_max_kb_is_refused(
    snapcam: Callable[..., SnapCamera], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    cam = snapcam("jpeg", size=300 * 1024)
    snaps, out = shoot(cam_cfg(url=cam.url), cfg=snap_cfg(max_kb=200))
    snaps.request("e1", "panic")
    out.wait(1)
    assert out.failed[0][2] == "too_large"
    assert "more than 200 kB" in out.failed[0][3]
    assert store.pending() == []


def test_snapshots__unreachable_camera(shoot: Callable[..., tuple[Snapshots, Outcome]]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    snaps, out = shoot(cam_cfg(url=f"http://127.0.0.1:{port}/snap.jpg"))
    snaps.request("e1", "panic")
    out.wait(1)
    assert out.failed[0][2] == "unreachable"


def test_snapshots__rtsp_camera_uses_its_snapshot_url(
    snapcam: Callable[..., SnapCamera], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    cam = snapcam("jpeg", size=5000)
    rtsp = cam_cfg(CameraKind.RTSP, url="rtsp://127.0.0.1:9/stream1", name="yard")
    cfg = snap_cfg(("yard",), urls=(("yard", cam.url),))
    snaps, out = shoot(rtsp, cfg=cfg)
    snaps.request("e7", "panic")
    out.wait(1)
    assert [p.jpeg for p in store.pending()] == [cam.jpeg]


def test_snapshots__two_cameras_give_numbered_parts(
    snapcam: Callable[..., SnapCamera], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    a, b = snapcam("jpeg", size=3000), snapcam("jpeg", size=4000)
    snaps, out = shoot(cam_cfg(url=a.url, name="a-cam"), cam_cfg(url=b.url, name="b-cam"))
    assert snaps.request("e1", "panic") == 2
    assert snaps.request("e2", "tamper") == 0, "an input without cameras asks for nothing"
    out.wait(2)
    parts = sorted((p.camera, p.part, p.parts) for p in store.pending())
    assert parts == [("a-cam", 1, 2), ("b-cam", 2, 2)]


def test_snapshots__a_hung_camera_never_blocks_the_caller_or_another_camera(
    snapcam: Callable[..., SnapCamera], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    stuck, good = snapcam("hang"), snapcam("jpeg", size=3000)
    snaps, out = shoot(cam_cfg(url=stuck.url, name="stuck"), cam_cfg(url=good.url, name="good"))
    caller = threading.current_thread().name
    for i in range(3):
        snaps.request(f"e{i}", "panic")
    out.wait(6)
    assert sorted(f[2] for f in out.failed) == ["timeout"] * 3
    assert [p.event_id for p in store.pending()] == ["e0", "e1", "e2"]
    assert caller not in out.threads


def test_snapshots__alarm_storm_gets_busy_not_a_backlog(
    snapcam: Callable[..., SnapCamera], shoot: Callable[..., tuple[Snapshots, Outcome]]
) -> None:
    cam = snapcam("hang")
    snaps, out = shoot(cam_cfg(url=cam.url, timeout_s=5.0))
    n = QUEUE_PER_CAMERA + 5
    for i in range(n):
        snaps.request(f"e{i}", "panic")
    busy = [f for f in out.failed if f[2] == "busy"]
    assert 4 <= len(busy) <= 5  # the worker may already have taken the first job off the queue
    assert all("stills already waiting" in f[3] for f in busy)
    snaps.close(timeout=0.2)  # the rest are reported, none silently forgotten
    cam.release.set()
    out.wait(n, timeout=30)
    assert {f[2] for f in out.failed} <= {"busy", "stopped", "timeout", "unreachable"}  # released: hangs up


def test_snapshots__close_reports_queued_stills_and_is_idempotent(
    snapcam: Callable[..., SnapCamera], shoot: Callable[..., tuple[Snapshots, Outcome]]
) -> None:
    cam = snapcam("hang")
    snaps, out = shoot(cam_cfg(url=cam.url, timeout_s=5.0))
    for i in range(3):
        snaps.request(f"e{i}", "panic")
    snaps.close(timeout=0.2)
    snaps.close()
    assert repr(snaps) == "<Snapshots closed>"
    snaps.request("late", "panic")
    assert ("late", "gate-cam", "stopped", "the agent is stopping") in out.failed
    cam.release.set()


def test_snapshots__store_failure_is_reported(
    snapcam: Callable[..., SnapCamera], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    cam = snapcam("jpeg", size=2000)
    snaps, out = shoot(cam_cfg(url=cam.url))
    store.close()
    snaps.request("e1", "panic")
    out.wait(1)
    assert out.failed[0][2:] == ("store_error", f"photo store: OutboxError: photo store {store.path} is closed")


def test_snapshots__failing_callbacks_do_not_kill_the_worker(
    snapcam: Callable[..., SnapCamera], store: PhotoStore
) -> None:
    cam = snapcam("jpeg", size=2000)
    done = threading.Event()
    calls = []

    def boom() -> None:
        calls.append(1)
        if len(calls) == 2:
            done.set()
        raise RuntimeError("daemon trouble")

    with Snapshots((cam_cfg(url=cam.url),), snap_cfg(), store, on_stored=boom, on_failed=lambda *_: None) as snaps:
        snaps.start()
        snaps.request("e1", "panic")
        snaps.request("e2", "panic")
        assert done.wait(20)
    assert len(store.pending()) == 2


# ---- picamera2, faked at its import boundary --------------------------------------------------------


class FakePi:
    """State shared with a fake ``picamera2`` module put into ``sys.modules``.

    ``capture_file`` writes a JPEG whose size shrinks with the quality asked
    for, as a real encoder's does: ``bytes_at_q100 * quality / 100``.
    """

    def __init__(
        self,
        *,
        bytes_at_q100: int = 300_000,
        open_error: str | None = None,
        capture_error: str | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.bytes_at_q100 = bytes_at_q100
        self.open_error = open_error
        self.capture_error = capture_error
        self.gate = gate
        self.opened = self.closed = self.started = 0
        self.qualities: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self.capturing = threading.Event()

    def module(self) -> types.ModuleType:
        fake = self

        class Picamera2:
            def __init__(self, camera_num: int = 0) -> None:
                if fake.open_error:
                    raise RuntimeError(fake.open_error)
                fake.opened += 1
                self.options: dict[str, Any] = {}

            def create_still_configuration(self, main: dict[str, Any] | None = None, **_kw: Any) -> dict[str, Any]:
                return {"main": main}

            def configure(self, config: dict[str, Any]) -> None:
                fake.sizes.append(config["main"]["size"])

            def start(self) -> None:
                fake.started += 1

            def capture_metadata(self) -> dict[str, Any]:
                return {"ExposureTime": 1000}

            def capture_file(self, file: io.BytesIO, name: str = "main", format: str | None = None) -> None:  # noqa: A002 - picamera2's own keyword
                assert (name, format) == ("main", "jpeg")
                fake.capturing.set()
                if fake.gate is not None:
                    fake.gate.wait()
                if fake.capture_error:
                    raise RuntimeError(fake.capture_error)
                quality = int(self.options.get("quality", 90))
                fake.qualities.append(quality)
                file.write(make_jpeg(fake.bytes_at_q100 * quality // 100, quality))

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


def test_picamera__still_at_configured_size_and_quality(
    fake_pi: Callable[..., FakePi], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    pi = fake_pi(bytes_at_q100=300_000)
    snaps, out = shoot(cam_cfg(CameraKind.PICAMERA2))
    snaps.request("e1", "panic")
    out.wait(1)
    [photo] = store.pending()
    assert photo.jpeg == make_jpeg(240_000, 80)
    assert (pi.sizes, pi.qualities) == ([(1280, 720)], [80])
    assert pi.opened == pi.closed == 1, "opened for the still and released after it, as the probe does"


def test_picamera__quality_lowered_until_it_fits(
    fake_pi: Callable[..., FakePi], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    pi = fake_pi(bytes_at_q100=800_000)  # q80 = 640 kB, q65 = 520 kB, q50 = 400 kB > 390 kB, q35 = 280 kB
    snaps, out = shoot(cam_cfg(CameraKind.PICAMERA2), cfg=snap_cfg(max_kb=390))
    snaps.request("e1", "panic")
    out.wait(1)
    assert pi.qualities == [80, 65, 50, 35]
    assert len(store.pending()[0].jpeg) == 280_000


def test_picamera__too_large_even_at_the_floor(
    fake_pi: Callable[..., FakePi], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    pi = fake_pi(bytes_at_q100=2_000_000)
    snaps, out = shoot(cam_cfg(CameraKind.PICAMERA2), cfg=snap_cfg(max_kb=100))
    snaps.request("e1", "panic")
    out.wait(1)
    assert pi.qualities == [80, 65, 50, 35, 30]
    assert out.failed[0][2] == "too_large"
    assert out.failed[0][3].startswith("still of 585 kB at quality 30 exceeds max_kb 100")
    assert pi.opened == pi.closed


@pytest.mark.parametrize(
    ("kw", "detail"),
    [
        (
            {"open_error": "Camera __init__ sequence did not complete."},
            "camera 0 cannot be opened (RuntimeError: Camera __init__ sequence did not complete.)",
        ),
        ({"capture_error": "dma buffer gone"}, "camera 0 failed to capture (RuntimeError: dma buffer gone)"),
    ],
)
def test_picamera__errors_say_why(
    fake_pi: Callable[..., FakePi], shoot: Callable[..., tuple[Snapshots, Outcome]], kw: dict[str, Any], detail: str
) -> None:
    pi = fake_pi(**kw)
    snaps, out = shoot(cam_cfg(CameraKind.PICAMERA2))
    snaps.request("e1", "panic")
    out.wait(1)
    assert out.failed[0][2] == "camera_error"
    assert out.failed[0][3].startswith(detail)
    assert pi.opened == pi.closed


def test_picamera__not_installed(
    monkeypatch: pytest.MonkeyPatch, shoot: Callable[..., tuple[Snapshots, Outcome]]
) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail, as on a box without it
    snaps, out = shoot(cam_cfg(CameraKind.PICAMERA2))
    snaps.request("e1", "panic")
    out.wait(1)
    assert out.failed[0][2:] == ("camera_error", "picamera2 is not installed: install python3-picamera2")


def test_picamera__hung_driver_is_reported_and_not_asked_again_until_it_returns(
    fake_pi: Callable[..., FakePi], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    gate = threading.Event()
    pi = fake_pi(bytes_at_q100=10_000, gate=gate)
    snaps, out = shoot(cam_cfg(CameraKind.PICAMERA2, timeout_s=0.2))
    try:
        snaps.request("e1", "panic")
        out.wait(1)
        assert out.failed[0][2] == "hung"
        snaps.request("e2", "panic")
        out.wait(2)
        assert out.failed[1][2:] == ("hung", "gate-cam: the previous capture is still hung; camera or network stuck")
        assert pi.opened == 1, "a hung camera is not opened a second time"
    finally:
        gate.set()
    eventually(lambda: pi.closed >= 1, 20.0, "the hung capture to finish on its own thread")
    snaps.request("e3", "panic")
    out.wait(3)
    assert [p.event_id for p in store.pending()] == ["e3"]


def test_picamera__waits_for_the_health_probe_holding_the_camera(
    fake_pi: Callable[..., FakePi], shoot: Callable[..., tuple[Snapshots, Outcome]], store: PhotoStore
) -> None:
    pi = fake_pi(bytes_at_q100=10_000)
    probe_lock = threading.Lock()
    snaps, out = shoot(cam_cfg(CameraKind.PICAMERA2, timeout_s=5.0), locks={"gate-cam": probe_lock})
    with probe_lock:
        snaps.request("e1", "panic")
        assert not pi.capturing.wait(0.3), "the still waits while the probe holds the camera"
    out.wait(1)
    assert len(store.pending()) == 1


# ---- the config keys -----------------------------------------------------------------------------

CAMS = """
cameras:
  - {name: gate-cam, kind: http_snapshot, url: "http://10.0.0.5/snap.jpg"}
  - {name: door-cam, kind: picamera2}
  - {name: yard, kind: rtsp, url: "rtsp://10.0.0.6/stream1"%s}
"""


def parse(tmp_path: Path, text: str) -> tuple[SnapshotsConfig, list[str]]:
    """What ``schema.build`` does once the lead hooks it in: inputs and cameras first, then the snapshot keys."""
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    data, _ = load_marked(path)
    ctx = Ctx(path)
    root = Section(ctx, data, "", 1)
    inputs, cameras = [], []
    for sec, _ in root.items("inputs"):
        for key in INPUT_KEYS:
            sec.raw(key)  # the hook's sec.done(INPUT_KEYS)
        inputs.append((schema._input(sec), sec))
    for sec, _ in root.items("cameras"):
        for key in CAMERA_KEYS:
            sec.raw(key)
        cameras.append((schema._camera(sec, tmp_path), sec))
    cfg = parse_snapshot_config(root, inputs, cameras)
    return cfg, [p.replace(f"{path}:", "") for p in ctx.problems]


def test_parse_snapshot_config__defaults_and_merged_triggers(tmp_path: Path) -> None:
    cfg, problems = parse(
        tmp_path,
        """
inputs:
  - {name: panic, pin: 17, snapshot: [gate-cam]}
  - {name: lid, kind: tamper, pin: 27}
"""
        + CAMS % ', snapshot_url: "http://10.0.0.6/still.jpg", snapshot_on: [panic, lid]'
        + """
  - {name: back-cam, kind: http_snapshot, url: "http://10.0.0.7/s.jpg", snapshot_on: [panic]}
""",
    )
    assert problems == []
    assert (cfg.max_kb, cfg.max_mb, cfg.width, cfg.height, cfg.quality) == (400, 50.0, 1280, 720, 80)
    assert cfg.cameras_for("panic") == ("gate-cam", "yard", "back-cam")
    assert cfg.cameras_for("lid") == ("yard",)
    assert cfg.cameras_for("nothing") == ()
    assert cfg.enabled
    cams = {
        c.name: c
        for c in (
            cam_cfg(url="http://10.0.0.5/snap.jpg"),
            cam_cfg(CameraKind.RTSP, url="rtsp://10.0.0.6/stream1", name="yard"),
            cam_cfg(CameraKind.PICAMERA2, name="door-cam"),
        )
    }
    assert cfg.still_url(cams["gate-cam"]) == "http://10.0.0.5/snap.jpg"
    assert cfg.still_url(cams["yard"]) == "http://10.0.0.6/still.jpg"
    assert cfg.still_url(cams["door-cam"]) is None


def test_parse_snapshot_config__no_snapshots_configured(tmp_path: Path) -> None:
    cfg, problems = parse(tmp_path, "inputs:\n  - {name: panic, pin: 17}\n")
    assert problems == []
    assert not cfg.enabled


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "inputs:\n  - {name: panic, pin: 17, snapshot: [gate-camm]}\n" + CAMS % "",
            "2: inputs[0].snapshot: no camera named 'gate-camm'; did you mean 'gate-cam'?",
        ),
        (
            "inputs:\n  - {name: panic, pin: 17, snapshot: gate-cam}\n" + CAMS % "",
            "2: inputs[0].snapshot: expected a list of names like [gate-cam], got the single name 'gate-cam'; put it in [ ]",
        ),
        (
            "inputs:\n  - {name: panic, pin: 17, snapshot: [gate-cam, gate-cam]}\n" + CAMS % "",
            "2: inputs[0].snapshot: a name is listed twice in ['gate-cam', 'gate-cam']",
        ),
        (
            "inputs:\n  - {name: panic, pin: 17, snapshot: [yard]}\n" + CAMS % "",
            "2: inputs[0].snapshot: camera 'yard' is an rtsp stream and takes a still only through its snapshot_url; "
            "add snapshot_url: http://... to that camera or leave it out here",
        ),
        (
            "inputs:\n  - {name: panic, pin: 17}\n" + CAMS % ", snapshot_on: [panik]",
            "7: cameras[2].snapshot_on: no input named 'panik'; did you mean 'panic'?",
        ),
        (
            "inputs:\n  - {name: panic, pin: 17}\n" + CAMS % ', snapshot_url: "rtsp://10.0.0.6/x"',
            "7: cameras[2].snapshot_url: expected a URL like http://host/snapshot.jpg, got 'rtsp://10.0.0.6/x'",
        ),
        (
            "inputs:\n  - {name: panic, pin: 17}\n" + CAMS % ', snapshot_url: "http://u:pw@10.0.0.6/x"',
            "7: cameras[2].snapshot_url: do not put a password in the URL; use the camera's username and password_file",
        ),
        (
            'inputs:\n  - {name: panic, pin: 17}\ncameras:\n  - {name: d, kind: picamera2, snapshot_url: "http://h/x"}\n',
            "4: cameras[0].snapshot_url: a picamera2 camera takes its still itself; remove snapshot_url",
        ),
        (
            "snapshots:\n  max_kb: 4096\n  max_mb: 2\n",
            "2: snapshots.max_kb: one photo (4096 KiB) must fit in the store (max_mb 2); lower max_kb",
        ),
        ("snapshots:\n  quality: 100\n", "2: snapshots.quality: expected (JPEG quality) 10-95, got 100"),
        ("snapshots:\n  widht: 640\n", "2: snapshots.widht: unknown key; did you mean 'width'?"),
        (
            "inputs:\n  - {name: panic, pin: 17}\n"
            + CAMS % ""
            + "".join(f"  - {{name: c{i}, kind: picamera2, snapshot_on: [panic]}}\n" for i in range(5)),
            "2: inputs[0].snapshot: at most 4 cameras per alarm, got 5 (c0, c1, c2, c3, c4)",
        ),
    ],
)
def test_parse_snapshot_config__invalid(tmp_path: Path, text: str, problem: str) -> None:
    _, problems = parse(tmp_path, text)
    assert problem in problems, problems


def test_snapshots__photos_dropped_for_room_are_reported(snapcam: Callable[..., SnapCamera], tmp_path: Path) -> None:
    cam = snapcam("jpeg", size=400 * 1024)
    out = Outcome()
    with (
        PhotoStore(tmp_path / "small.db", max_mb=1) as small,
        Snapshots(
            (cam_cfg(url=cam.url),), snap_cfg(max_kb=500), small, on_stored=out.on_stored, on_failed=out.on_failed
        ) as snaps,
    ):
        snaps.start()
        for i in range(3):
            snaps.request(f"e{i}", "panic")
        out.wait(4)
        assert [p.event_id for p in small.pending()] == ["e1", "e2"]
    assert [f[:3] for f in out.failed] == [("e0", "gate-cam", "dropped")]
    assert out.failed[0][3] == "dropped unsent to make room in the photo store (snapshots.max_mb 50)"
