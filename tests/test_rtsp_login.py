"""The RTSP probe answers a camera's 401 with the configured login (Basic, or Digest per RFC 2617).

It never sent the login: a camera wanting one even for ``OPTIONS`` was a
fault for ever, with a hint nothing in the config could act on.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config.model import CameraConfig, CameraKind, Secret
from agent.rtsp_probe import probe_rtsp

USER, PASSWORD = "tech", "s3cret-Pa55"
REALM, NONCE = "IP Camera(21563)", "6b1e0f3a9c2d4e5f"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class _LoginCamera:
    """Answers ``OPTIONS`` 200 only with the right login; otherwise 401 with ``challenge``. Keeps each request."""

    def __init__(self, challenge: str) -> None:
        self.challenge = challenge
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.url = f"rtsp://127.0.0.1:{self._sock.getsockname()[1]}/stream1"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2.0)
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(1024)):
                    data += chunk
                text = data.decode("latin-1")
                self.requests.append(text)
                cseq = re.search(r"CSeq: (\d+)", text)
                head = f"CSeq: {cseq[1] if cseq else 0}\r\n"
                if self._authorized(text):
                    conn.sendall(f"RTSP/1.0 200 OK\r\n{head}Public: OPTIONS, DESCRIBE\r\n\r\n".encode())
                else:
                    conn.sendall(f"RTSP/1.0 401 Unauthorized\r\n{head}{self.challenge}\r\n\r\n".encode())

    def _authorized(self, text: str) -> bool:
        auth = re.search(r"\r\nAuthorization: (\w+) (.*)\r\n", text)
        if auth is None:
            return False
        if auth[1] == "Basic":
            return base64.b64decode(auth[2]).decode() == f"{USER}:{PASSWORD}"
        p: dict[str, str] = dict(re.findall(r'(\w+)="?([^",]*)"?', auth[2]))
        ha1, ha2 = _md5(f"{USER}:{REALM}:{PASSWORD}"), _md5(f"OPTIONS:{p['uri']}")
        if "qop" in p:
            want = _md5(f"{ha1}:{NONCE}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")
        else:
            want = _md5(f"{ha1}:{NONCE}:{ha2}")
        return p["username"] == USER and p["nonce"] == NONCE and p["uri"] == self.url and p["response"] == want

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sock.close()


@pytest.fixture
def make_camera() -> Iterator[type[_LoginCamera]]:
    made: list[_LoginCamera] = []

    class Made(_LoginCamera):
        def __init__(self, challenge: str) -> None:
            super().__init__(challenge)
            made.append(self)

    try:
        yield Made
    finally:
        for cam in made:
            cam.stop()


def _cfg(url: str, *, login: bool = True, password: str = PASSWORD) -> CameraConfig:
    """Built directly: validation would refuse the short timeout that keeps this test fast."""
    return CameraConfig(
        name="door",
        kind=CameraKind.RTSP,
        url=url,
        timeout_s=1.0,
        probe_interval_s=60,
        fail_after=3,
        username=USER if login else None,
        password=Secret(password, Path("/etc/campus-agent/door.pass")) if login else None,
        auth="basic",
        camera_num=0,
    )


CHALLENGES = {
    "basic": f'WWW-Authenticate: Basic realm="{REALM}"',
    "digest": f'WWW-Authenticate: Digest realm="{REALM}", nonce="{NONCE}", stale="FALSE"',
    "digest-qop": f'WWW-Authenticate: Digest realm="{REALM}", nonce="{NONCE}", qop="auth", algorithm=MD5',
    "both": f'WWW-Authenticate: Basic realm="{REALM}"\r\nWWW-Authenticate: Digest realm="{REALM}", nonce="{NONCE}"',
}


@pytest.mark.parametrize("kind", sorted(CHALLENGES))
def test_rtsp_login__a_401_is_answered_once_with_the_configured_login(
    make_camera: type[_LoginCamera], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cam = make_camera(CHALLENGES[kind])
    r = probe_rtsp(_cfg(cam.url))
    assert r.ok, r.detail
    assert re.fullmatch(r"RTSP/1\.0 200 OK in \d+ ms", r.detail)
    assert len(cam.requests) == 2
    assert "Authorization" not in cam.requests[0]
    assert "CSeq: 2\r\n" in cam.requests[1]
    scheme = "Basic" if kind == "basic" else "Digest"  # Digest when offered: it never sends the password
    assert f"\r\nAuthorization: {scheme} " in cam.requests[1]
    assert PASSWORD not in caplog.text


def test_rtsp_login__a_wrong_password_names_the_login_settings(make_camera: type[_LoginCamera]) -> None:
    cam = make_camera(CHALLENGES["digest"])
    r = probe_rtsp(_cfg(cam.url, password="wrong-one"))
    assert (r.ok, r.detail) == (
        False,
        "RTSP/1.0 401 Unauthorized from 127.0.0.1: login refused; check the camera's username and password_file",
    )
    assert len(cam.requests) == 2


def test_rtsp_login__no_login_configured_says_to_set_one(make_camera: type[_LoginCamera]) -> None:
    cam = make_camera(CHALLENGES["basic"])
    r = probe_rtsp(_cfg(cam.url, login=False))
    assert (r.ok, r.detail) == (
        False,
        "RTSP/1.0 401 Unauthorized from 127.0.0.1: the camera wants a login even for OPTIONS; "
        "set username and password_file",
    )
    assert len(cam.requests) == 1


def test_rtsp_login__a_login_scheme_it_cannot_send_is_named(make_camera: type[_LoginCamera]) -> None:
    cam = make_camera('WWW-Authenticate: Digest realm="x", nonce="y", algorithm=SHA-256')
    r = probe_rtsp(_cfg(cam.url))
    assert (r.ok, r.detail) == (
        False,
        "RTSP/1.0 401 Unauthorized from 127.0.0.1: it asks for a login the probe cannot send (offers digest)",
    )
    assert len(cam.requests) == 1
