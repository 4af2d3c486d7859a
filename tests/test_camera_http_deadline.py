"""A camera that trickles its HTTP head: the still and the probe end at their budget, not when the camera stops.

requests' timeouts bound each read; a head sent a byte at a time, each well
inside the read timeout, kept a still (and the camera's lock) or a probe
reading for as long as the camera cared to go on.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from agent.camprobes import probe_http
from agent.config.model import CameraConfig
from agent.stills import HttpStill, SnapshotError
from tests.support.camservers import camera_cfg

T = TypeVar("T")
_DRIP_S = 0.02  # one header byte this often: far inside any read timeout


class _TrickleCamera:
    """Answers ``200 image/jpeg`` and then header bytes one at a time, never ending the head (until stopped)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/snapshot.jpg"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(1.0)
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(1024)):
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Slow: ")
                while not self._stop.wait(_DRIP_S):
                    conn.sendall(b"a")
            except OSError:
                pass  # the client gave up: what the test wants

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        for t in self._threads:
            t.join(2.0)


@pytest.fixture
def trickle() -> Iterator[_TrickleCamera]:
    cam = _TrickleCamera()
    try:
        yield cam
    finally:
        cam.stop()


def _cfg(url: str) -> CameraConfig:
    return camera_cfg(url, timeout_s=0.3)


def _within(fn: Callable[[], T], wait_s: float) -> tuple[T | SnapshotError, float]:
    """``fn()``'s result (or SnapshotError) and the seconds it took; fails if it runs past ``wait_s``."""
    box: list[T | SnapshotError] = []

    def run() -> None:
        try:
            box.append(fn())
        except SnapshotError as exc:
            box.append(exc)

    t0 = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(wait_s)
    took = time.monotonic() - t0
    assert box, f"still reading the trickled head {took:.1f} s after the start"
    return box[0], took


def test_camera_http_deadline__a_still_with_a_trickled_head_is_a_timeout_within_its_budget(
    trickle: _TrickleCamera,
) -> None:
    taker = HttpStill(_cfg(trickle.url), trickle.url, 400 * 1024)
    got, took = _within(taker.take, taker.limit_s + 2.0)
    assert isinstance(got, SnapshotError), got
    assert (got.reason, str(got)) == ("timeout", f"still from gate-cam unfinished within {taker.limit_s:g} s")
    assert took < taker.limit_s + 0.5


def test_camera_http_deadline__a_probe_of_a_trickled_head_says_the_camera_answered_too_slowly(
    trickle: _TrickleCamera,
) -> None:
    cfg = _cfg(trickle.url)
    got, took = _within(lambda: probe_http(cfg), 2 * cfg.timeout_s + 2.0)
    assert not isinstance(got, SnapshotError)
    assert not got.ok
    assert got.detail.endswith("answered too slowly: unfinished after 0.6 s; camera overloaded or bad link"), got.detail
    assert took < 2 * cfg.timeout_s + 0.5  # the camera worker's own budget is 2 * timeout_s + 1 s
