"""One still image from one camera: over HTTP(S) with the camera's login, or from a Pi camera through picamera2.

:class:`HttpStill` and :class:`PiStill` each have ``take()`` (the JPEG bytes,
or :class:`SnapshotError` with a reason and a message that says what to check)
and ``limit_s``, the budget (s) a capture gets before :mod:`agent.snapshots`
gives up on it as ``hung``.  Neither keeps the camera open between stills.

The HTTP fetch is shared with the health probe (``camprobes.probe_http``):
:func:`camera_get` follows no redirect, reads no 401's body (requests
reads either whole, however large) and shuts its connections down at the
exchange's deadline (a head trickled a byte at a time), and :func:`read_capped` reads the body
one receive at a time against a deadline and a cap, uncompressed only, so a
camera that trickles, stalls or sends a bomb costs neither time nor memory.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from agent.config.model import CameraConfig, CameraKind
from agent.config.snapshots import SnapshotsConfig
from agent.errors import CameraError, printable

if TYPE_CHECKING:
    import requests
    from requests.adapters import HTTPAdapter
    from requests.auth import AuthBase, HTTPDigestAuth

_WARMUP_FRAMES = 3  # auto exposure settles within a few frames after start
_QUALITY_STEP = 15  # JPEG quality is lowered by this until the still fits max_kb ...
_QUALITY_FLOOR = 30  # ... but not below this: a smaller but useless photo helps nobody
_PI_START_S = 2.0  # seconds a Pi camera may take to open and start on top of timeout_s
_USER_AGENT = "campus-edge-agent snapshot"
_READ = 65536  # bytes at most per read of a body
_LATE_POLL_S = 0.05  # after the deadline, how often a connection still being opened is looked for

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


class BodyTooLargeError(CameraError):
    """A camera's answer passed the cap set for it."""


class BodyTimeoutError(CameraError, TimeoutError):
    """A camera's answer was still unfinished at its deadline."""


class AnswerTimeoutError(CameraError, TimeoutError):
    """A camera's whole answer (head and body) was unfinished at the deadline of :func:`camera_get`."""


class BodyEncodedError(CameraError):
    """A camera's answer came compressed (``Content-Encoding``) though asked for none; the message is the coding."""


@functools.cache
def _digest_auth() -> type[HTTPDigestAuth]:
    from requests.auth import HTTPDigestAuth  # noqa: PLC0415 - only HTTP cameras pay for requests

    class _Digest(HTTPDigestAuth):
        """Digest login that never reads a 401's body: requests' own reads it whole, and a camera may send GiBs."""

        def handle_401(self, r: requests.Response, **kwargs: Any) -> requests.Response:
            if 400 <= r.status_code < 500:
                r._content = b""  # noqa: SLF001 - requests then takes the body as read
                r.raw.close()  # and this connection, body unread, is never used again
            got: requests.Response = super().handle_401(r, **kwargs)  # type: ignore[no-untyped-call]
            return got

    return _Digest


@functools.cache
def _no_redirects() -> type[requests.Session]:
    import requests  # noqa: PLC0415 - only HTTP cameras pay for requests

    class _NoRedirects(requests.Session):
        """Never follows a redirect, nor reads its body: requests reads it whole even with allow_redirects=False."""

        def get_redirect_target(self, resp: requests.Response) -> None:  # noqa: ARG002 - requests' signature
            return None

    return _NoRedirects


def still_budget_s(cfg: CameraConfig) -> float:
    """The time (s) one still may take: a Pi camera opens and starts, digest auth takes two round trips."""
    return cfg.timeout_s + _PI_START_S if cfg.kind is CameraKind.PICAMERA2 else 2 * cfg.timeout_s + 1.0


class _Deadline:
    """Shuts a camera's connections down at a deadline: requests' timeouts bound each read, never the exchange.

    A camera that sends its head a byte at a time, each well inside the read
    timeout, would otherwise hold the caller (and the camera's lock) for ever.
    """

    def __init__(self, budget_s: float) -> None:
        self.expired = False
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self._done = False
        self._timer = self._arm(budget_s)

    def _arm(self, after_s: float) -> threading.Timer:
        timer = threading.Timer(after_s, self._fire)
        timer.daemon = True
        timer.start()
        return timer

    def watch(self, conn: Any) -> None:
        """Shut ``conn`` down at the deadline (a urllib3 connection, its socket opened later)."""
        with self._lock:
            self._conns.append(conn)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for conn in self._conns:
                sock = getattr(conn, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):  # already closed, or a TLS socket not yet wrapped
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
            self._timer = self._arm(_LATE_POLL_S)  # a connection still being opened gets its socket later

    def cancel(self) -> None:
        with self._lock:
            self._done = True
            self._timer.cancel()


@functools.cache
def _deadline_adapter() -> Callable[[_Deadline], HTTPAdapter]:
    from requests.adapters import HTTPAdapter  # noqa: PLC0415 - only HTTP cameras pay for requests
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager  # noqa: PLC0415
    from urllib3.connection import HTTPConnection, HTTPSConnection  # noqa: PLC0415

    class _Http(HTTPConnectionPool):
        deadline: _Deadline

        def _new_conn(self) -> HTTPConnection:
            conn: HTTPConnection = super()._new_conn()  # type: ignore[assignment]
            self.deadline.watch(conn)
            return conn

    class _Https(HTTPSConnectionPool):
        deadline: _Deadline

        def _new_conn(self) -> HTTPSConnection:
            conn: HTTPSConnection = super()._new_conn()  # type: ignore[assignment]
            self.deadline.watch(conn)
            return conn

    class _Pools(PoolManager):
        def __init__(self, deadline: _Deadline, **kw: Any) -> None:
            super().__init__(**kw)
            self.deadline = deadline
            self.pool_classes_by_scheme = {"http": _Http, "https": _Https}

        def _new_pool(
            self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
        ) -> HTTPConnectionPool:
            pool = super()._new_pool(scheme, host, port, request_context)
            pool.deadline = self.deadline  # type: ignore[attr-defined]
            return pool

    class _DeadlineAdapter(HTTPAdapter):
        """Every connection it opens is shut down at the deadline."""

        def __init__(self, deadline: _Deadline) -> None:
            self.deadline = deadline
            super().__init__()

        def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
            self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
            self.poolmanager = _Pools(self.deadline, num_pools=connections, maxsize=maxsize, block=block, **kw)

    return _DeadlineAdapter


@contextlib.contextmanager
def camera_get(
    url: str, auth: AuthBase | None, timeout_s: float, user_agent: str, *, budget_s: float
) -> Iterator[requests.Response]:
    """GET ``url`` for a JPEG, the body left for :func:`read_capped`; a redirect is returned as it is, body unread.

    Connect and each read wait at most ``timeout_s`` seconds, and the whole
    exchange (head, body, a digest login's second round trip) ``budget_s``
    seconds: then its connections are shut down.

    Raises:
        AnswerTimeoutError: the exchange was unfinished within ``budget_s`` (whatever broke of it).

    """
    deadline = _Deadline(budget_s)
    try:
        with _no_redirects()() as session:
            adapter = _deadline_adapter()(deadline)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            with session.get(
                url,
                auth=auth,
                stream=True,
                allow_redirects=False,
                timeout=(timeout_s, timeout_s),
                headers={"Accept": "image/jpeg", "Accept-Encoding": "identity", "User-Agent": user_agent},
            ) as resp:
                yield resp
    except Exception:
        if deadline.expired:
            raise AnswerTimeoutError(f"unfinished within {budget_s:g} s") from None
        raise
    finally:
        deadline.cancel()
    if deadline.expired:  # the body may have ended early because its socket was shut down
        raise AnswerTimeoutError(f"unfinished within {budget_s:g} s")


def camera_login(cfg: CameraConfig) -> AuthBase | None:
    """The camera's login for requests (basic or digest), or None; the password goes to the camera only."""
    if cfg.username is None:
        return None
    from requests.auth import HTTPBasicAuth  # noqa: PLC0415 - only HTTP cameras pay for requests

    secret = cfg.password.reveal() if cfg.password is not None else ""
    return _digest_auth()(cfg.username, secret) if cfg.auth == "digest" else HTTPBasicAuth(cfg.username, secret)


def read_capped(resp: requests.Response, max_bytes: int, deadline: float, *, idle_s: float | None = None) -> bytes:
    """The whole body, at most ``max_bytes`` and complete by ``deadline`` (monotonic s).

    Each read takes what one receive brings and waits at most the time left
    (and at most ``idle_s`` for a camera that went quiet), so a camera that
    drips a byte at a time, or stops mid-way, cannot hold the caller past
    ``deadline``.  A compressed body is refused, never inflated: a JPEG does
    not compress, and a small gzip body can inflate without end.

    Raises:
        BodyEncodedError: the body is compressed (the message is its coding).
        BodyTooLargeError: more than ``max_bytes`` (the message is the bytes read).
        BodyTimeoutError: unfinished at ``deadline`` (the message is the bytes read).
        urllib3.exceptions.HTTPError: the connection broke.

    """
    from urllib3.exceptions import ReadTimeoutError  # noqa: PLC0415 - loaded with requests

    coding = resp.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise BodyEncodedError(printable(coding[:40]))
    sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
    body = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BodyTimeoutError(str(len(body)))
        if sock is not None:
            sock.settimeout(left if idle_s is None else min(left, idle_s))
        try:
            chunk = resp.raw.read1(_READ, decode_content=False)
        except ReadTimeoutError:
            raise BodyTimeoutError(str(len(body))) from None
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLargeError(str(len(body)))


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

        from agent.camprobes import address_of, answer_problem  # noqa: PLC0415 - camprobes loads stills lazily

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
