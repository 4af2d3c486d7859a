"""Real loopback cameras for the probe tests: an HTTP snapshot camera and an RTSP server.

Both bind 127.0.0.1 on a free port, run on daemon threads, and switch
behaviour through a plain ``mode`` attribute the test sets at any time.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import socket
import threading
import urllib.request
from typing import Any, Self

from agent.config.model import CameraConfig, CameraKind

# A JPEG as far as any probe can tell: SOI + APP0 header, filler, EOI.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) * 8 + b"\xff\xd9"


def camera_cfg(
    url: str | None, *, kind: CameraKind = CameraKind.HTTP_SNAPSHOT, timeout_s: float = 1.0, name: str = "gate-cam"
) -> CameraConfig:
    """A camera built directly: validation would refuse the short timeouts that keep these tests fast."""
    return CameraConfig(
        name=name,
        kind=kind,
        url=url,
        timeout_s=timeout_s,
        probe_interval_s=60,
        fail_after=3,
        username=None,
        password=None,
        auth="basic",
        camera_num=0,
    )


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_args: Any) -> None:  # keep the test output quiet
        return

    def do_GET(self) -> None:
        cam = self.server.camera
        cam.hits += 1
        mode = cam.mode
        if mode == "hang":
            cam.release.wait()
            return
        if mode in ("raw", "cut"):  # not HTTP at all / hang up half-way through the JPEG
            head = b"" if mode == "raw" else b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n"
            self.wfile.write(head + b"Content-Length: %d\r\n\r\n" % len(JPEG) + JPEG[:500])
            self.close_connection = True
            return
        if mode in ("basic", "digest") and not self._authorized(mode):
            challenge = (
                f'Digest realm="{cam.realm}", nonce="{cam.nonce}", qop="auth", algorithm=MD5'
                if mode == "digest"
                else f'Basic realm="{cam.realm}"'
            )
            self._send(401, "text/html", b"<html>401 Unauthorized</html>", {"WWW-Authenticate": challenge})
            return
        answers = {
            "error500": (500, "text/html", b"<html>Internal Server Error</html>"),
            "garbage": (200, "image/jpeg", b"<html><body>camera busy, try later</body></html>" * 4),
            "html": (200, "text/html; charset=utf-8", b"<html><body>login page</body></html>"),
            "truncated": (200, "image/jpeg", JPEG[: len(JPEG) // 2]),
        }
        self._send(*answers.get(mode, (200, "image/jpeg", JPEG)))

    def _send(self, code: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self, mode: str) -> bool:
        cam = self.server.camera
        header = self.headers.get("Authorization", "")
        if mode == "basic":
            return header == "Basic " + base64.b64encode(f"{cam.username}:{cam.password}".encode()).decode()
        if not header.startswith("Digest "):
            return False
        f = urllib.request.parse_keqv_list(urllib.request.parse_http_list(header[len("Digest ") :]))
        ha1 = _md5(f"{cam.username}:{cam.realm}:{cam.password}")
        ha2 = _md5(f"GET:{f.get('uri', '')}")
        want = _md5(f"{ha1}:{cam.nonce}:{f.get('nc', '')}:{f.get('cnonce', '')}:auth:{ha2}")
        return f.get("username") == cam.username and f.get("nonce") == cam.nonce and f.get("response") == want


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    camera: HttpCamera


class HttpCamera:
    """An IP camera's snapshot endpoint on 127.0.0.1 (``url``), switched by ``mode``.

    Modes: ``jpeg`` (200 image/jpeg), ``error500``, ``basic`` / ``digest`` (the
    JPEG only with the right login, else 401 with that challenge), ``garbage``
    (200 image/jpeg with an HTML body), ``html`` (200 text/html),
    ``truncated`` (half a JPEG), ``cut`` (hangs up half-way through the body),
    ``raw`` (not HTTP) and ``hang`` (read the request, never answer until
    :meth:`stop`).  ``hits`` counts requests, so a test can wait for probes.
    """

    realm = "IP Camera"
    nonce = "6d0f1c2b3a495867"

    def __init__(self, mode: str = "jpeg", *, username: str = "tech", password: str = "s3cret-Pa55") -> None:
        self.mode = mode
        self.username = username
        self.password = password
        self.hits = 0
        self.release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.camera = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="http-camera", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/snapshot.jpg"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


class RtspServer:
    """Answers RTSP ``OPTIONS`` on 127.0.0.1; :meth:`stop` makes it go away, :meth:`start` brings it back.

    Modes: ``ok`` (``RTSP/1.0 200 OK``), ``not_found`` (``RTSP/1.0 404``),
    ``http`` (answers as a web server would), ``close`` (hangs up without a
    word) and ``hang`` (accepts, never answers).  The port stays the same
    across restarts; ``requests`` keeps every request's first line.
    """

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.port = 0
        self.requests: list[str] = []
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/stream1"

    def start(self) -> RtspServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(8)
        sock.settimeout(0.05)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="rtsp-server", daemon=True)
        self._thread.start()
        return self

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                data += chunk
        except OSError:
            conn.close()
            return
        lines = data.decode("latin-1").split("\r\n")
        self.requests.append(lines[0])
        cseq = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("cseq:")), "0")
        if self.mode == "hang":
            self._held.append(conn)
            return
        replies = {
            "ok": f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n",
            "not_found": f"RTSP/1.0 404 Not Found\r\nCSeq: {cseq}\r\n\r\n",
            "http": "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            "close": "",
        }
        with conn:
            conn.sendall(replies[self.mode].encode())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for conn in self._held:
            conn.close()
        self._held.clear()
