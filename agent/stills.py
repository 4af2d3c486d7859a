"""One still image from one camera: over HTTP(S) with the camera's login, or from a Pi camera through picamera2.

:class:`HttpStill` and :class:`PiStill` each have ``take()`` (the JPEG bytes,
or :class:`SnapshotError` with a reason and a message that says what to check)
and ``limit_s``, the budget (s) a capture gets before :mod:`agent.snapshots`
gives up on it as ``hung``.  Neither keeps the camera open between stills.

The HTTP fetch is shared with the health probe (``camprobes.probe_http``) and
lives in :mod:`agent.camera_http`: :func:`~agent.camera_http.camera_get`
bounds the whole exchange by a deadline, and
:func:`~agent.camera_http.read_capped` the body by a deadline and a cap, so a
camera that trickles, stalls or sends a bomb costs neither time nor memory.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import time
from typing import TYPE_CHECKING, Any

from agent.camera_http import (
    AnswerTimeoutError,
    BodyEncodedError,
    BodyTimeoutError,
    BodyTooLargeError,
    camera_get,
    camera_login,
    read_capped,
)
from agent.camera_verdicts import address_of, answer_problem
from agent.config.model import CameraConfig, CameraKind
from agent.config.snapshots import SnapshotsConfig
from agent.errors import CameraError

if TYPE_CHECKING:
    import requests

_WARMUP_FRAMES = 3  # auto exposure settles within a few frames after start
_QUALITY_STEP = 15  # JPEG quality is lowered by this until the still fits max_kb ...
_QUALITY_FLOOR = 30  # ... but not below this: a smaller but useless photo helps nobody
_PI_START_S = 2.0  # seconds a Pi camera may take to open and start on top of timeout_s
_USER_AGENT = "campus-edge-agent snapshot"


REASONS = (
    "unreachable",
    "timeout",
    "login",
    "http_error",
    "not_jpeg",
    "too_large",
    "camera_error",
    "hung",
    "busy",
    "store_error",
    "stopped",
    "dropped",
    "refused",
)  # refused: photosend.PhotoDrain


class SnapshotError(CameraError):
    """A still could not be taken; ``reason`` is one of :data:`REASONS`, the message says what to check."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        self.reason = reason
        super().__init__(detail)


_TRAILER = b"\r\n\x00 "  # what some cameras send after the JPEG's end marker; never stored


def _jpeg_problem(body: bytes) -> str | None:
    if not body.startswith(b"\xff\xd8"):
        return f"starts {body[:4].hex(' ') or 'empty'}, no FF D8 marker"
    if not body.rstrip(_TRAILER).endswith(b"\xff\xd9"):
        return f"{len(body)} bytes with no FF D9 end marker (truncated)"
    return None


def _read_timed_out(exc: BaseException) -> bool:
    """True when a read timeout is behind ``exc`` (requests wraps one in a ConnectionError)."""
    from urllib3.exceptions import ReadTimeoutError  # noqa: PLC0415 - loaded with requests

    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:  # a chain is a few links long; this ends a cycle
        e = todo.pop()
        if isinstance(e, (ReadTimeoutError, TimeoutError)):
            return True
        seen.append(e)
        todo.extend(a for a in (e.__cause__, e.__context__, *e.args) if isinstance(a, BaseException) and a not in seen)
    return False


def still_budget_s(cfg: CameraConfig) -> float:
    """The time (s) one still may take: a Pi camera opens and starts, digest auth takes two round trips."""
    return cfg.timeout_s + _PI_START_S if cfg.kind is CameraKind.PICAMERA2 else 2 * cfg.timeout_s + 1.0


class HttpStill:
    """Fetches one still over HTTP(S) with the camera's login; used for ``http_snapshot`` and ``rtsp`` cameras."""

    def __init__(self, cfg: CameraConfig, url: str, max_bytes: int) -> None:
        self.cfg = cfg
        self.url = url
        self.max_bytes = max_bytes
        self.limit_s = still_budget_s(cfg)

    def take(self) -> bytes:
        import requests  # noqa: PLC0415 - only agents with HTTP cameras pay for requests
        from urllib3.exceptions import HTTPError  # noqa: PLC0415

        cfg = self.cfg
        auth = camera_login(cfg)
        t0 = time.monotonic()
        try:
            with camera_get(self.url, auth, cfg.timeout_s, _USER_AGENT, budget_s=self.limit_s) as resp:
                self._check_status(resp.status_code, has_login=auth is not None)
                body = self._read(resp, t0)
        except AnswerTimeoutError:
            raise SnapshotError("timeout", f"still from {cfg.name} unfinished within {self.limit_s:g} s") from None
        except (requests.RequestException, HTTPError) as exc:
            if isinstance(exc, requests.Timeout) or _read_timed_out(exc):
                raise SnapshotError("timeout", f"no still from {cfg.name} within {cfg.timeout_s:g} s") from None
            answer = answer_problem(exc, address_of(self.url, 443 if self.url.startswith("https:") else 80)[2])
            if answer is not None:
                raise SnapshotError(answer[0], f"{cfg.name}: {answer[1]}") from None
            raise SnapshotError(
                "unreachable",
                f"cannot fetch a still from {cfg.name} ({type(exc).__name__}); check the network and snapshot URL",
            ) from None
        problem = _jpeg_problem(body)
        if problem is not None:
            raise SnapshotError("not_jpeg", f"{cfg.name} sent no JPEG ({problem}); check the snapshot URL")
        return body.rstrip(_TRAILER)  # the payload ends FF D9 (agent/schemas/snapshot.md)

    def _check_status(self, code: int, *, has_login: bool) -> None:
        if code == 200:
            return
        if code == 401:
            fix = "check the camera's username and password_file" if has_login else "set username and password_file"
            raise SnapshotError("login", f"HTTP 401 from {self.cfg.name}: {fix}")
        if 300 <= code < 400:
            raise SnapshotError(
                "http_error", f"HTTP {code} from {self.cfg.name}: it redirects; configure the URL it redirects to"
            )
        raise SnapshotError("http_error", f"HTTP {code} from {self.cfg.name}")

    def _read(self, resp: requests.Response, t0: float) -> bytes:
        try:
            return read_capped(resp, self.max_bytes, t0 + self.limit_s, idle_s=self.cfg.timeout_s)
        except BodyTooLargeError:
            raise SnapshotError(
                "too_large",
                f"{self.cfg.name} sent more than {self.max_bytes // 1024} kB; "
                "lower the camera's snapshot resolution or raise snapshots.max_kb",
            ) from None
        except BodyTimeoutError:
            raise SnapshotError("timeout", f"still from {self.cfg.name} unfinished within {self.limit_s:g} s") from None
        except BodyEncodedError as exc:
            raise SnapshotError(
                "not_jpeg",
                f"{self.cfg.name} sent its still compressed (Content-Encoding {exc}); check the snapshot URL",
            ) from None


class PiStill:
    """Takes one JPEG still from a Raspberry Pi camera through picamera2 (imported at the first capture).

    Wiring: the CSI ribbon as for the health probe (``camprobes.PiCameraProbe``).
    """

    def __init__(self, cfg: CameraConfig, snaps: SnapshotsConfig, max_bytes: int) -> None:
        self.cfg = cfg
        self.size = (snaps.width, snaps.height)
        self.quality = snaps.quality
        self.max_bytes = max_bytes
        self.limit_s = still_budget_s(cfg)
        self._module: Any = None

    def take(self) -> bytes:
        cam = self._open()
        try:
            cam.configure(cam.create_still_configuration(main={"size": self.size}))
            cam.start()
            for _ in range(_WARMUP_FRAMES):
                cam.capture_metadata()
            return self._capture(cam)
        except SnapshotError:
            raise
        except Exception as exc:
            raise SnapshotError(
                "camera_error",
                f"camera {self.cfg.camera_num} failed to capture ({type(exc).__name__}: {exc}); "
                "reboot the Pi if it persists",
            ) from None
        finally:
            for release in (cam.stop, cam.close):
                with contextlib.suppress(Exception):  # the still is taken or failed; the next capture reopens
                    release()

    def _open(self) -> Any:
        """The picamera2 object for this camera, importing picamera2 at the first capture."""
        if self._module is None:
            try:
                self._module = importlib.import_module("picamera2")
            except ImportError:
                raise SnapshotError("camera_error", "picamera2 is not installed: install python3-picamera2") from None
        num = self.cfg.camera_num
        try:
            return self._module.Picamera2(num)
        except Exception as exc:
            raise SnapshotError(
                "camera_error",
                f"camera {num} cannot be opened ({type(exc).__name__}: {exc}); another program may be using it",
            ) from None

    def _capture(self, cam: Any) -> bytes:
        """One JPEG within ``max_bytes``: lower the quality step by step rather than send nothing."""
        quality = self.quality
        while True:
            cam.options["quality"] = quality
            buf = io.BytesIO()
            cam.capture_file(buf, format="jpeg")
            data = buf.getvalue()
            if len(data) <= self.max_bytes:
                return data
            if quality <= _QUALITY_FLOOR:
                raise SnapshotError(
                    "too_large",
                    f"still of {len(data) // 1024} kB at quality {quality} "
                    f"exceeds max_kb {self.max_bytes // 1024}; lower snapshots.width/height",
                )
            quality = max(_QUALITY_FLOOR, quality - _QUALITY_STEP)
