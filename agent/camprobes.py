"""Camera probes: one look at a camera, returning a one-line verdict a technician can act on.

* ``http_snapshot``: GET the snapshot URL with requests (basic or digest auth,
  password from a file): status, content type, JPEG start and end markers,
  size and time taken.
* ``rtsp``: an ``OPTIONS`` request over a plain socket, expecting ``RTSP/1.0 200``;
  a 401 is answered once with the camera's login (Digest MD5, or Basic).
* ``picamera2``: libcamera lists the camera, a still arrives within the time
  budget, and the frame is neither uniformly dark (``covered``) nor identical
  to the previous one (``frozen``).

``requests`` and ``picamera2`` are imported on first use, only when such a
camera is configured: the agent runs on any Linux box, and without HTTP
cameras it does not pay for requests' memory.  Scheduling and hysteresis live
in ``cameras.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import importlib
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from agent.config.model import CameraConfig
from agent.errors import CameraError, printable

if TYPE_CHECKING:
    import requests

MAX_DETAIL = 160  # characters; the status schema's limit
_MAX_SNAPSHOT = 16 << 20  # bytes; anything larger is a video stream or the wrong URL
_MIN_JPEG = 125  # bytes; about the smallest valid JPEG file
_JPEG_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg")
_RTSP_MAX_HEAD = 4096  # bytes
_STILL_SIZE = (320, 240)  # pixels; small enough to copy and sample on a Pi Zero
_WARMUP_FRAMES = 8  # auto exposure starts dark and settles within a few frames
_SAMPLES = 4096  # bytes of each frame compared for darkness and freezing
_DARK_MEAN = 10  # of 255; a covered lens reads near black ...
_DARK_LIGHT = 40  # ... with fewer than 1% of samples brighter than this
_HANG_GRACE_S = 1.0
_USER_AGENT = "campus-edge-agent camera probe"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict: ``detail`` is one line a technician can act on (<= 160 chars)."""

    ok: bool
    detail: str
    elapsed_ms: int


def one_line(text: str) -> str:
    """``text`` on one line, cut to :data:`MAX_DETAIL`, with control characters escaped.

    A detail quotes what a camera sent (an RTSP status line, a Content-Type):
    it reaches ``status``, ``doctor`` and the log, and an ESC or a bidi
    override in it must not act on a technician's terminal.
    """
    one = printable(" ".join(text.split()))
    return one if len(one) <= MAX_DETAIL else one[: MAX_DETAIL - 1] + "…"


def elapsed_ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


def _timed(check: Callable[[float], str]) -> ProbeResult:
    """Run ``check(t0)``: a returned string is success, a :class:`CameraError` the failure's detail."""
    t0 = time.monotonic()
    try:
        ok, detail = True, check(t0)
    except CameraError as exc:
        ok, detail = False, str(exc)
    return ProbeResult(ok=ok, detail=one_line(detail), elapsed_ms=elapsed_ms(t0))


def address_of(url: str, default_port: int) -> tuple[str, int, str]:
    """(host, port, "host:port") of a URL, without any user name."""
    parts = urlsplit(url)
    host, port = parts.hostname or "?", parts.port or default_port
    return host, port, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and all it wraps: causes, args, and urllib3's ``reason``."""
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if all(e is not f for f in found):
            found.append(e)
            more = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
            todo.extend(m for m in more if isinstance(m, BaseException))
    return found


def answer_problem(exc: BaseException, where: str) -> tuple[str, str] | None:
    """(still reason, detail) when ``exc`` shows the camera did answer, but with a certificate or bytes we refuse.

    A self-signed certificate or a head of 150 lines is no network trouble:
    sending the technician after the network would waste the visit.
    """
    causes = _causes(exc)
    for e in causes:
        if isinstance(e, ssl.SSLCertVerificationError):
            why = e.verify_message or e.reason or "not verified"
            return "unreachable", (
                f"the certificate of {where} is not trusted: {why[:50]}; use http:// or a publicly trusted certificate"
            )
    cert = next((e for e in causes if isinstance(e, ssl.SSLError)), None)
    if cert is not None:
        return "unreachable", f"TLS with {where} failed ({cert.reason or cert}): check https:// against the camera"
    odd = next((e for e in causes if _malformed_http(e)), None)
    if odd is not None:
        return "http_error", f"{where} answered, but not with a camera's HTTP: {type(odd).__name__}: {odd}"
    return None


def _malformed_http(exc: BaseException) -> bool:
    """An HTTP head broken or too large (not a dropped connection, nor a wrong port's non-HTTP answer)."""
    dropped = (http.client.RemoteDisconnected, http.client.IncompleteRead, http.client.BadStatusLine)
    return isinstance(exc, http.client.HTTPException) and not isinstance(exc, dropped)


def _network_detail(exc: BaseException, host: str, where: str, timeout_s: float) -> str:
    problem = answer_problem(exc, where)
    return problem[1] if problem is not None else _reach_detail(exc, host, where, timeout_s)


def _reach_detail(exc: BaseException, host: str, where: str, timeout_s: float) -> str:
    causes = _causes(exc)
    names = {type(e).__name__ for e in causes}
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return f"connection refused by {where}: camera off or wrong port"
    if any(isinstance(e, socket.gaierror) for e in causes):
        return f"cannot resolve {host}: check the host name in the URL and the Pi's DNS"
    if any(isinstance(e, TimeoutError) or "timed out" in str(e) for e in causes):
        return f"no answer from {where} within {timeout_s:g} s: camera off, hung or unreachable"
    if "BadStatusLine" in names:
        return f"not an HTTP answer from {where}: check the port in the URL"
    if names & {"ConnectionResetError", "RemoteDisconnected", "IncompleteRead", "ChunkedEncodingError"}:
        return f"{where} dropped the connection mid-answer: camera rebooting or overloaded"
    return f"cannot reach {where} ({type(exc).__name__}): check the network and the URL"


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
    from agent.stills import BodyEncodedError, BodyTimeoutError, BodyTooLargeError, read_capped  # noqa: PLC0415

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

    from agent.stills import AnswerTimeoutError, camera_get, camera_login  # noqa: PLC0415 - loaded with requests

    url = cfg.url or ""
    host, _, where = address_of(url, 443 if url.startswith("https:") else 80)
    auth = camera_login(cfg)

    def check(t0: float) -> str:
        try:
            with camera_get(url, auth, cfg.timeout_s, _USER_AGENT, budget_s=2 * cfg.timeout_s) as resp:
                if resp.status_code != 200:
                    raise CameraError(_http_status_detail(resp.status_code, host, has_login=auth is not None))
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                body = _read_body(resp, t0 + cfg.timeout_s, where, cfg.timeout_s)
        except AnswerTimeoutError:
            raise CameraError(
                f"{where} answered too slowly: unfinished after {2 * cfg.timeout_s:g} s; camera overloaded or bad link"
            ) from None
        except (requests.RequestException, HTTPError) as exc:
            raise CameraError(_network_detail(exc, host, where, cfg.timeout_s)) from None
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

    return _timed(check)


def probe_rtsp(cfg: CameraConfig) -> ProbeResult:
    """Send RTSP ``OPTIONS`` over a plain socket and expect ``RTSP/1.0 200``, within ``timeout_s`` seconds a try.

    This proves the camera's streaming server answers, without pulling any
    video.  A 401 is answered once with the camera's login (Digest MD5 when the
    camera offers it, else Basic), so a try more: at most ``2 * timeout_s``.
    The password goes to the camera only, never into a detail or a log.
    """
    url = cfg.url or ""
    host, port, where = address_of(url, 554)
    parts = urlsplit(url)
    target = urlunsplit(("rtsp", parts.netloc.rpartition("@")[2], parts.path or "/", parts.query, ""))

    def check(t0: float) -> str:
        head = _rtsp_options(host, port, where, target, cseq=1, login=None, timeout_s=cfg.timeout_s)
        status = _rtsp_status(head, where)
        if " 401" in status and cfg.username is not None:
            login = _rtsp_login(cfg, _rtsp_challenges(head), target)
            if login is None:
                offered = ", ".join(sorted({c[0] for c in _rtsp_challenges(head)})) or "none"
                raise CameraError(
                    f"{status[:60]} from {host}: it asks for a login the probe cannot send (offers {offered[:30]})"
                )
            status = _rtsp_status(
                _rtsp_options(host, port, where, target, cseq=2, login=login, timeout_s=cfg.timeout_s), where
            )
        if status.split()[1:2] != ["200"]:
            raise CameraError(f"{status[:60]} from {host}: {_rtsp_hint(status, has_login=cfg.username is not None)}")
        return f"{status[:60]} in {elapsed_ms(t0)} ms"

    return _timed(check)


def _rtsp_hint(status: str, *, has_login: bool) -> str:
    if " 401" not in status:
        return "check the stream path in the URL"
    if has_login:
        return "login refused; check the camera's username and password_file"
    return "the camera wants a login even for OPTIONS; set username and password_file"


def _rtsp_options(
    host: str, port: int, where: str, target: str, *, cseq: int, login: str | None, timeout_s: float
) -> bytes:
    """One ``OPTIONS`` exchange on its own connection: the answer's head, all within ``timeout_s`` seconds."""
    t0 = time.monotonic()
    auth = f"Authorization: {login}\r\n" if login else ""
    request = f"OPTIONS {target} RTSP/1.0\r\nCSeq: {cseq}\r\n{auth}User-Agent: {_USER_AGENT}\r\n\r\n".encode()
    head = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(request)
            while b"\r\n\r\n" not in head and len(head) < _RTSP_MAX_HEAD:
                sock.settimeout(max(0.001, t0 + timeout_s - time.monotonic()))
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        if not head:  # once the status line is in, a reset or a stall still leaves enough to judge
            raise CameraError(_network_detail(exc, host, where, timeout_s)) from None
    if not head:
        raise CameraError(f"{where} closed the connection without answering: not an RTSP server? check the port")
    return head


def _rtsp_status(head: bytes, where: str) -> str:
    status = head.split(b"\r\n", 1)[0].decode("latin-1").strip()
    if not status.startswith("RTSP/1.0 "):
        raise CameraError(f"not an RTSP answer from {where} (got {status[:40]!r}): check the port in the URL")
    return status


_AUTH_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def _rtsp_challenges(head: bytes) -> list[tuple[str, dict[str, str]]]:
    """Each ``WWW-Authenticate`` of an RTSP head: (scheme in lower case, its parameters with lower-case names)."""
    found = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() != "www-authenticate" or not value.strip():
            continue
        scheme, _, rest = value.strip().partition(" ")
        params = {m[1].lower(): m[3] if m[2] is None else m[2].replace("\\", "") for m in _AUTH_PARAM.finditer(rest)}
        found.append((scheme.lower(), params))
    return found


def _rtsp_login(cfg: CameraConfig, challenges: list[tuple[str, dict[str, str]]], target: str) -> str | None:
    """The ``Authorization`` value answering the camera's challenge (Digest MD5 first), or None if none fits."""
    user = cfg.username or ""
    secret = cfg.password.reveal() if cfg.password is not None else ""
    for scheme, params in challenges:
        if scheme == "digest" and params.get("algorithm", "MD5").upper() == "MD5" and "nonce" in params:
            return _digest(user, secret, params, target)
    if any(scheme == "basic" for scheme, _ in challenges):
        return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
    return None


def _digest(user: str, secret: str, params: dict[str, str], uri: str) -> str:
    """RFC 2617 Digest (MD5, ``qop=auth`` when offered) for ``OPTIONS uri``."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    realm, nonce = params.get("realm", ""), params["nonce"]
    ha1, ha2 = md5(f"{user}:{realm}:{secret}"), md5(f"OPTIONS:{uri}")
    fields = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if "auth" in [q.strip() for q in params.get("qop", "").split(",")]:
        cnonce = os.urandom(8).hex()
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", "nc=00000001", f'cnonce="{cnonce}"']
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    fields.append(f'response="{response}"')
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(fields)


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
        return _timed(self._check)

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
