"""Hostile HTTP cameras against a still (agent/stills.py) and a health probe (agent/camprobes.py).

Each camera is a raw socket server on 127.0.0.1 that answers the way a broken
or hostile camera does: a body dripped a byte at a time, a body that stops,
a huge body behind a redirect or a digest challenge, a gzip bomb.  A still or
a probe must end within its time budget and its memory cap whatever comes.
"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.camera_verdicts import ProbeResult
from agent.camprobes import probe_http
from agent.config.model import CameraKind, Secret
from agent.stills import HttpStill, SnapshotError
from tests.support.snapcam import SnapCamera, make_jpeg
from tests.test_snapshots import cam_cfg

MIB = 1 << 20
DIGEST = 'WWW-Authenticate: Digest realm="cam", nonce="abc", qop="auth", algorithm=MD5\r\n'
Answer = Callable[[socket.socket, threading.Event], None]


class RawCamera:
    """A camera on 127.0.0.1 whose every GET is answered by ``answer(conn, stop)``; stopped by :meth:`stop`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sent = 0
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="raw-camera", daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/snapshot.jpg"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="raw-camera-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5.0)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 16384:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                self.answer(conn, self._stop)
            except OSError:
                return  # the client hung up: that is what these tests want of it

    def stop(self) -> None:
        self._stop.set()
        self._accepting.join(2.0)
        self._sock.close()
        for t in self._threads:
            t.join(5.0)


@pytest.fixture
def raw_camera() -> Iterator[Callable[[Answer], RawCamera]]:
    made: list[RawCamera] = []

    def make(answer: Answer) -> RawCamera:
        cam = RawCamera(answer)
        made.append(cam)
        return cam

    yield make
    for cam in made:
        cam.stop()


def drip(every: float = 0.05) -> Answer:
    """200 image/jpeg announcing 200 kB, then one byte every ``every`` s: each read well inside its timeout."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 200000\r\n\r\n\xff\xd8")
        for _ in range(2000):  # 100 s at most
            if stop.wait(every):
                return
            conn.sendall(b"\x00")

    return answer


def stall(conn: socket.socket, stop: threading.Event) -> None:
    """200 image/jpeg announcing 100 kB, ten bytes of it, then nothing until the test ends."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n\xff\xd8" + bytes(10))
    stop.wait(30.0)


def big_body(status: str, headers: str, mib: int = 64) -> Answer:
    """``status`` with ``mib`` MiB of zeros behind it (Content-Length set)."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\n{headers}Content-Length: {mib * MIB}\r\n\r\n".encode())
        block = bytes(MIB)
        for _ in range(mib):
            if stop.is_set():
                return
            conn.sendall(block)

    return answer


def gzip_bomb(status: str, headers: str, mib: int = 64) -> Answer:
    """``status`` with a gzip body that inflates to ``mib`` MiB (about ``mib`` KiB on the wire)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    blob = b"".join(c.compress(bytes(MIB)) for _ in range(mib)) + c.flush()

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            f"HTTP/1.1 {status}\r\n{headers}Content-Encoding: gzip\r\nContent-Length: {len(blob)}\r\n\r\n".encode()
            + blob
        )

    return answer


def take(taker: HttpStill) -> bytes | SnapshotError:
    try:
        return taker.take()
    except SnapshotError as exc:
        return exc


def peak_of(fn: Callable[[], object]) -> tuple[int, object]:
    """(peak bytes Python allocated while ``fn`` ran, what it returned)."""
    tracemalloc.start()
    try:
        got = fn()
        return tracemalloc.get_traced_memory()[1], got
    finally:
        tracemalloc.stop()


def test_http_still__dripping_body_is_a_timeout_within_its_budget(
    raw_camera: Callable[[Answer], RawCamera],
) -> None:
    """A still read 64 KiB at a time and checked its deadline only between reads: a drip ran for ~3 hours."""
    cam = raw_camera(drip())
    taker = HttpStill(cam_cfg(url=cam.url, timeout_s=0.5), cam.url, 400 * 1024)
    t0 = time.monotonic()
    got = take(taker)
    took = time.monotonic() - t0
    assert isinstance(got, SnapshotError), got
    assert (got.reason, str(got)) == ("timeout", "still from gate-cam unfinished within 2 s")
    assert took < taker.limit_s + 3.0, f"took {took:.1f} s, budget {taker.limit_s:g} s"  # margin: a loaded machine


def test_probe_http__dripping_body_ends_within_its_timeout(raw_camera: Callable[[Answer], RawCamera]) -> None:
    """The probe's body reader had the same blind spot: a drip held the probe (and the camera's lock)."""
    cam = raw_camera(drip())
    t0 = time.monotonic()
    result = probe_http(cam_cfg(CameraKind.HTTP_SNAPSHOT, url=cam.url, timeout_s=0.5))
    took = time.monotonic() - t0
    assert not result.ok
    assert result.detail.startswith(f"snapshot from 127.0.0.1:{cam.port} unfinished after 0.5 s"), result.detail
    assert took < 4.0, f"took {took:.1f} s, timeout 0.5 s"  # a drip used to hold it for hours


def test_http_still__body_that_stops_midway_is_a_timeout(raw_camera: Callable[[Answer], RawCamera]) -> None:
    """requests turns a read timeout while streaming into a ConnectionError: it was reported ``unreachable``."""
    cam = raw_camera(stall)
    got = take(HttpStill(cam_cfg(url=cam.url, timeout_s=0.5), cam.url, 400 * 1024))
    assert isinstance(got, SnapshotError), got
    assert got.reason == "timeout", f"{got.reason}: {got}"


CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "redirect": ("302 Found", "Location: /next.jpg\r\n", {}),
    "digest401": ("401 Unauthorized", DIGEST, {"username": "tech", "auth": "digest"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_http_still__huge_redirect_or_401_body_is_never_read(
    raw_camera: Callable[[Answer], RawCamera], case: str
) -> None:
    """requests read a redirect's body whole (resolve_redirects) and digest auth a 401's: 64 MiB in memory."""
    status, headers, login = CASES[case]
    cam = raw_camera(big_body(status, headers))
    cfg = cam_cfg(url=cam.url, timeout_s=5.0, password=Secret("pw", Path("/x")), **login)
    peak, got = peak_of(lambda: take(HttpStill(cfg, cam.url, 400 * 1024)))
    assert isinstance(got, SnapshotError), got
    assert got.reason == ("http_error" if case == "redirect" else "login"), got
    assert peak < 16 * MIB, f"a still with max_kb 400 peaked at {peak // MIB} MiB"


@pytest.mark.parametrize("case", sorted(CASES))
def test_probe_http__huge_redirect_or_401_body_is_never_read(
    raw_camera: Callable[[Answer], RawCamera], case: str
) -> None:
    """The health probe went through the same requests paths as the still."""
    status, headers, login = CASES[case]
    cam = raw_camera(big_body(status, headers))
    cfg = cam_cfg(CameraKind.HTTP_SNAPSHOT, url=cam.url, timeout_s=5.0, password=Secret("pw", Path("/x")), **login)
    peak, got = peak_of(lambda: probe_http(cfg))
    assert isinstance(got, ProbeResult), got
    assert not got.ok
    assert got.detail.startswith("HTTP 302" if case == "redirect" else "HTTP 401"), got.detail
    assert peak < 16 * MIB, f"a probe peaked at {peak // MIB} MiB"


def test_http_still__gzip_redirect_is_not_inflated(raw_camera: Callable[[Answer], RawCamera]) -> None:
    """A 64 KiB gzip 302 body made requests inflate 64 MiB, twice over; now it says what to configure."""
    cam = raw_camera(gzip_bomb("302 Found", "Location: /next.jpg\r\n"))
    peak, got = peak_of(lambda: take(HttpStill(cam_cfg(url=cam.url, timeout_s=5.0), cam.url, 400 * 1024)))
    assert isinstance(got, SnapshotError), got
    assert (got.reason, str(got)) == (
        "http_error",
        "HTTP 302 from gate-cam: it redirects; configure the URL it redirects to",
    )
    assert peak < 16 * MIB, f"peaked at {peak // MIB} MiB"


def test_http_still__compressed_answer_is_refused_not_inflated(raw_camera: Callable[[Answer], RawCamera]) -> None:
    """A gzip body was inflated by urllib3 (bounded per read only in recent urllib3); now it is never inflated."""
    cam = raw_camera(gzip_bomb("200 OK", "Content-Type: image/jpeg\r\n"))
    peak, got = peak_of(lambda: take(HttpStill(cam_cfg(url=cam.url, timeout_s=5.0), cam.url, 400 * 1024)))
    assert isinstance(got, SnapshotError), got
    assert (got.reason, str(got)) == (
        "not_jpeg",
        "gate-cam sent its still compressed (Content-Encoding gzip); check the snapshot URL",
    )
    assert peak < 16 * MIB, f"peaked at {peak // MIB} MiB"


def test_probe_http__compressed_answer_is_refused(raw_camera: Callable[[Answer], RawCamera]) -> None:
    """The probe reads its body the same way: a compressed answer is not a JPEG."""
    cam = raw_camera(gzip_bomb("200 OK", "Content-Type: image/jpeg\r\n", mib=1))
    result = probe_http(cam_cfg(CameraKind.HTTP_SNAPSHOT, url=cam.url, timeout_s=5.0))
    assert not result.ok
    assert result.detail == f"not a JPEG (Content-Encoding gzip) from 127.0.0.1:{cam.port}: check the snapshot URL"


def test_http_still__trailing_bytes_after_the_end_marker_are_not_stored() -> None:
    """A still ending FF D9 CR LF passed the check but was stored as sent: the payload must end FF D9."""
    cam = SnapCamera(size=20_000).start()
    try:
        jpeg = make_jpeg(20_000)
        cam.jpeg = jpeg + b"\r\n"
        body = HttpStill(cam_cfg(url=cam.url, timeout_s=2.0), cam.url, 400 * 1024).take()
        assert body == jpeg
    finally:
        cam.stop()


def test_http_still__camera_bytes_in_its_detail_are_escaped_and_bounded(
    raw_camera: Callable[[Answer], RawCamera],
) -> None:
    """The status line's version went into the detail as sent: an ESC reached ``snapshot_failed`` and the log."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/9.9\x1b]0;owned\x07\x1b[2J" + b"x" * 1000 + b" 200 OK\r\nContent-Length: 0\r\n\r\n")

    cam = raw_camera(answer)
    got = take(HttpStill(cam_cfg(url=cam.url, timeout_s=2.0), cam.url, 400 * 1024))
    assert isinstance(got, SnapshotError), got
    assert got.reason == "http_error"
    detail = str(got)
    assert detail.isprintable(), detail
    assert "\\x1b]0;owned\\x07" in detail
    assert len(detail) <= 200, len(detail)
