"""A camera that did answer, but with a certificate or a head we refuse, is not sent after the network.

Both verdicts said "cannot reach ... check the network": a technician would
check cables while the camera's private certificate, or its broken HTTP, was
the matter.
"""

from __future__ import annotations

import http.server
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.camprobes import probe_http
from agent.config.model import CameraConfig
from agent.stills import HttpStill, SnapshotError
from tests.support.camservers import camera_cfg
from tests.support.certs import issue, make_ca


def _cfg(url: str) -> CameraConfig:
    return camera_cfg(url, timeout_s=2.0)


def _still_error(url: str) -> SnapshotError:
    with pytest.raises(SnapshotError) as caught:
        HttpStill(_cfg(url), url, 400 * 1024).take()
    return caught.value


class _Jpeg(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"\xff\xd8" + bytes(300) + b"\xff\xd9"
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def private_https(tmp_path: Path) -> Iterator[str]:
    """An HTTPS camera whose certificate a private CA signed (as most cameras' own certificates are)."""
    cert = issue(make_ca(tmp_path), tmp_path, "cam", "cam", server=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Jpeg)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_path, cert.key_path)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/snap.jpg"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(2.0)


def test_camera_words__a_private_certificate_is_named_not_the_network(private_https: str) -> None:
    where = re.escape(private_https.split("/")[2])
    r = probe_http(_cfg(private_https))
    assert not r.ok
    assert re.fullmatch(
        rf"the certificate of {where} is not trusted: unable to get local issuer certificate; "
        r"use http:// or a publicly trusted certificate",
        r.detail,
    ), r.detail
    exc = _still_error(private_https)
    assert exc.reason == "unreachable"
    assert "is not trusted" in str(exc)


HEADS = {
    "many": (
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n",
        "got more than 100 headers",
    ),
    "long": (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", "got more than 65536 bytes"),
}


def _answer(sock: socket.socket, stop: threading.Event, head: bytes) -> None:
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        with conn:
            try:
                conn.settimeout(2.0)
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(1024)):
                    data += chunk
                conn.sendall(head)
            except OSError:
                pass  # the client gave up reading: what a refused head looks like


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_camera_words__a_head_no_camera_sends_is_named_not_the_network(kind: str) -> None:
    head, why = HEADS[kind]
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()
    t = threading.Thread(target=_answer, args=(sock, stop, head), daemon=True)
    t.start()
    where = f"127.0.0.1:{sock.getsockname()[1]}"
    url = f"http://{where}/snap.jpg"
    try:
        r = probe_http(_cfg(url))
        assert not r.ok
        assert r.detail.startswith(f"{where} answered, but not with a camera's HTTP: "), r.detail
        assert why in r.detail
        exc = _still_error(url)
        assert (exc.reason, str(exc).split(": ", 1)[1]) == ("http_error", r.detail)
    finally:
        stop.set()
        t.join(2.0)
        sock.close()
