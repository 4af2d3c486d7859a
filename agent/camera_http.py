"""One HTTP(S) exchange with a camera, bounded in time and in bytes whatever the camera does.

Shared by a still (:class:`agent.stills.HttpStill`) and the health probe
(``camprobes.probe_http``), kept apart from both because it is requests and
urllib3 bent to a camera's worst: :func:`camera_get` follows no redirect,
reads no 401's body (requests reads either whole, however large) and shuts
its connections down at the exchange's deadline (a head trickled a byte at a
time), and :func:`read_capped` reads the body one receive at a time against
a deadline and a cap, uncompressed only, so a camera that trickles, stalls or
sends a bomb costs neither time nor memory.  requests is imported on first
use: only agents with HTTP cameras pay for it.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from agent.config.model import CameraConfig
from agent.errors import CameraError, printable

if TYPE_CHECKING:
    import requests
    from requests.adapters import HTTPAdapter
    from requests.auth import AuthBase, HTTPDigestAuth

_READ = 65536  # bytes at most per read of a body
_LATE_POLL_S = 0.05  # after the deadline, how often a connection still being opened is looked for


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
