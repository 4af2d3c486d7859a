"""Camera probes: one look at a camera, returning a one-line verdict a technician can act on.

* ``http_snapshot``: GET the snapshot URL with requests (basic or digest auth,
  password from a file): status, content type, JPEG start and end markers,
  size and time taken.
* ``rtsp``: an ``OPTIONS`` request over a plain socket, expecting ``RTSP/1.0 200``;
  a 401 is answered once with the camera's login (Digest MD5, or Basic).
  It lives in :mod:`agent.rtsp_probe` and is re-exported here.
* ``picamera2``: libcamera lists the camera, a still arrives within the time
  budget, and the frame is neither uniformly dark (``covered``) nor identical
  to the previous one (``frozen``).

``requests`` and ``picamera2`` are imported on first use, only when such a
camera is configured: the agent runs on any Linux box, and without HTTP
cameras it does not pay for requests' memory.  The verdict and its words are
:mod:`agent.camera_verdicts`; scheduling and hysteresis live in ``cameras.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import TYPE_CHECKING, Any

from agent.camera_verdicts import (
    USER_AGENT,
    ProbeResult,
    address_of,
    elapsed_ms,
    network_detail,
    one_line,
    timed,
)
from agent.config.model import CameraConfig
from agent.errors import CameraError
from agent.rtsp_probe import probe_rtsp

if TYPE_CHECKING:
    import requests

_MAX_SNAPSHOT = 16 << 20  # bytes; anything larger is a video stream or the wrong URL
_MIN_JPEG = 125  # bytes; about the smallest valid JPEG file
_JPEG_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg")
_STILL_SIZE = (320, 240)  # pixels; small enough to copy and sample on a Pi Zero
_WARMUP_FRAMES = 8  # auto exposure starts dark and settles within a few frames
_SAMPLES = 4096  # bytes of each frame compared for darkness and freezing
_DARK_MEAN = 10  # of 255; a covered lens reads near black ...
_DARK_LIGHT = 40  # ... with fewer than 1% of samples brighter than this


def _http_status_detail(code: int, host: str, *, has_login: bool) -> str:
    hints = {
        401: "check the camera username and password file"
        if has_login
        else "the camera wants a login; set username and password_file",
        403: "this user may not take snapshots; check its rights on the camera",
        404: "wrong snapshot path in the URL; see the camera's manual",
    }
    fallback = "the camera reports an internal error; power-cycle it" if code >= 500 else "check the snapshot URL"
    if 300 <= code < 400:  # redirects are not followed: requests would read their bodies whole
        fallback = "the camera redirects; configure the URL it redirects to"
    return f"HTTP {code} from {host}: {hints.get(code, fallback)}"


def _read_body(resp: requests.Response, deadline: float, where: str, timeout_s: float) -> bytes:
    from agent.camera_http import BodyEncodedError, BodyTimeoutError, BodyTooLargeError, read_capped  # noqa: PLC0415

    try:
        return read_capped(resp, _MAX_SNAPSHOT, deadline)
    except BodyEncodedError as exc:
        raise CameraError(f"not a JPEG (Content-Encoding {exc}) from {where}: check the snapshot URL") from None
    except BodyTooLargeError:
        raise CameraError(
            f"answer from {where} passes {_MAX_SNAPSHOT >> 20} MiB: a video stream? use the snapshot URL"
        ) from None
    except BodyTimeoutError as exc:
        raise CameraError(f"snapshot from {where} unfinished after {timeout_s:g} s ({exc} bytes): slow link") from None


def probe_http(cfg: CameraConfig) -> ProbeResult:
    """Fetch an IP camera's snapshot URL and check that a whole JPEG arrives.

    Checks, in order: the connection, the status code, the content type, the
    JPEG start (FF D8) and end (FF D9) markers and a plausible size.  Connect
    and each read wait at most ``timeout_s`` seconds, the body must be
    complete ``timeout_s`` seconds after the start, and the whole exchange (a
    digest login's two round trips) ``2 * timeout_s``, however the camera
    trickles.  A certificate the agent does not trust (it trusts public CAs
    only) and a head no camera sends are named as such.  A redirect is reported,
    not followed.  The password (``auth``: basic or digest) goes to the
    camera only, never into a detail or a log.
    """
    import requests  # noqa: PLC0415 - only HTTP cameras pay for requests
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    from agent.camera_http import AnswerTimeoutError, camera_get, camera_login  # noqa: PLC0415 - loaded with requests

    url = cfg.url or ""
    host, _, where = address_of(url, 443 if url.startswith("https:") else 80)
    auth = camera_login(cfg)

    def check(t0: float) -> str:
        try:
            with camera_get(url, auth, cfg.timeout_s, USER_AGENT, budget_s=2 * cfg.timeout_s) as resp:
                if resp.status_code != 200:
                    raise CameraError(_http_status_detail(resp.status_code, host, has_login=auth is not None))
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                body = _read_body(resp, t0 + cfg.timeout_s, where, cfg.timeout_s)
        except AnswerTimeoutError:
            raise CameraError(
                f"{where} answered too slowly: unfinished after {2 * cfg.timeout_s:g} s; camera overloaded or bad link"
            ) from None
        except (requests.RequestException, HTTPError) as exc:
            raise CameraError(network_detail(exc, host, where, cfg.timeout_s)) from None
        if ctype not in _JPEG_TYPES:
            raise CameraError(
                f"not a JPEG (content type {ctype or 'none'}, {len(body)} bytes) from {host}: check the snapshot URL"
            )
        if not body.startswith(b"\xff\xd8"):
            raise CameraError(
                f"not a JPEG (starts {body[:4].hex(' ') or 'empty'}, no FF D8 marker) from {host}: "
                "check the snapshot URL"
            )
        if not body.rstrip(b"\r\n\x00 ").endswith(b"\xff\xd9"):
            raise CameraError(
                f"truncated JPEG ({len(body)} bytes, no FF D9 end marker) from {host}: "
                "camera overloaded or network trouble"
            )
        if len(body) < _MIN_JPEG:
            raise CameraError(f"JPEG of only {len(body)} bytes from {host}: the camera sends no real picture")
        return f"200 {ctype} {len(body)} bytes in {elapsed_ms(t0)} ms"

    return timed(check)


def _sample(frame: Any) -> bytes:
    """About ``_SAMPLES`` evenly spaced bytes of a frame (a numpy array on a Pi, any buffer here)."""
    data = frame.tobytes() if hasattr(frame, "tobytes") else bytes(memoryview(frame))
    return data[:: max(1, len(data) // _SAMPLES)]


def _is_dark(sample: bytes) -> bool:
    light = sum(1 for b in sample if b > _DARK_LIGHT)
    return sum(sample) <= _DARK_MEAN * len(sample) and light * 100 < len(sample)


class PiCameraProbe:
    """Checks a Raspberry Pi camera on the CSI ribbon cable through picamera2.

    Wiring: the ribbon's contacts face the board's contacts at both ends and
    both latches are closed; the legacy camera stack must be off (raspi-config).

    picamera2 is imported at the first probe.  Each probe checks that libcamera
    lists the camera, opens it, captures a small still and releases it, so other
    programs may use the camera in between.  A sample of the last frame is kept
    to report a ``frozen`` pipeline; a uniformly dark frame is ``covered``.
    :class:`Cameras` waits at most ``timeout_s`` seconds for a probe, because a
    hung driver cannot be interrupted from Python.
    """

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self._module: Any = None
        self._previous: bytes | None = None

    def probe(self) -> ProbeResult:
        return timed(self._check)

    def _check(self, t0: float) -> str:
        if self._module is None:
            try:
                self._module = importlib.import_module("picamera2")
            except ImportError:
                raise CameraError(
                    "picamera2 is not installed: install python3-picamera2 and give the agent's "
                    "venv system site packages"
                ) from None
        num = self.cfg.camera_num
        try:
            listed = list(self._module.Picamera2.global_camera_info())
        except Exception as exc:
            raise CameraError(f"libcamera cannot list cameras ({type(exc).__name__}: {exc}); reboot the Pi") from None
        if not listed:
            raise CameraError("no camera found by libcamera: check the ribbon cable and that the camera is enabled")
        if num >= len(listed):
            raise CameraError(f"camera {num} not found: libcamera lists {len(listed)}; check camera_num and the cables")
        model = str(listed[num].get("Model", "camera"))
        sample = self._capture(num, model, t0)
        previous, self._previous = self._previous, sample
        mean = sum(sample) // max(1, len(sample))
        if not sample:
            raise CameraError(f"camera {num} ({model}) returned an empty frame; reboot the Pi")
        if _is_dark(sample):
            raise CameraError(
                f"covered: frame is uniformly dark (mean {mean}/255); check the lens for a cover, dirt or a dead light"
            )
        if sample == previous:
            raise CameraError("frozen: frame identical to the previous one; the camera pipeline hung, reboot the Pi")
        return f"{model} still {_STILL_SIZE[0]}x{_STILL_SIZE[1]} mean {mean}/255 in {elapsed_ms(t0)} ms"

    def _capture(self, num: int, model: str, t0: float) -> bytes:
        try:
            cam = self._module.Picamera2(num)
        except Exception as exc:
            raise CameraError(
                f"camera {num} ({model}) cannot be opened ({exc}): another program may be using it; else reboot the Pi"
            ) from None
        try:
            cam.configure(cam.create_still_configuration(main={"size": _STILL_SIZE, "format": "RGB888"}))
            cam.start()
            sample = _sample(cam.capture_array("main"))
            for _ in range(_WARMUP_FRAMES):
                if not _is_dark(sample) or time.monotonic() - t0 > self.cfg.timeout_s / 2:
                    break
                sample = _sample(cam.capture_array("main"))
            return sample
        except Exception as exc:
            raise CameraError(
                f"camera {num} ({model}) failed to capture ({type(exc).__name__}: {exc}); reboot the Pi"
            ) from None
        finally:
            for release in (cam.stop, cam.close):
                with contextlib.suppress(Exception):  # the verdict is made; the next probe reopens anyway
                    release()


__all__ = ["PiCameraProbe", "ProbeResult", "address_of", "elapsed_ms", "one_line", "probe_http", "probe_rtsp"]
