"""Text from outside (a device, a camera, another client on the broker) never acts on a terminal, nor kills a tool.

Found by a hunt for hostile input: a huge integer in a retained status ended
``campus-agent monitor`` at every start; ``campus-agent ack`` printed a
device's refusal reason raw; a camera's RTSP status line or Content-Type
reached ``status``, ``doctor`` and the log raw; an event's ``source`` had no
length cap on the monitor's screen.
"""

from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import time
from typing import Any

import pytest

from agent.camprobes import probe_http
from agent.central.fleet import FleetView
from agent.central.link import Incoming
from agent.central.monitor import MonitorOptions, Target, run_monitor
from agent.central.settings import LinkSettings
from agent.cli import format_status, main
from agent.config import BrokerAddress
from agent.config.model import CameraConfig, CameraKind
from agent.doctor.checks import check_camera
from agent.events import new_id
from agent.rtsp_probe import probe_rtsp
from tests.support.agentproc import unique_id
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.test_cameras import cam_cfg

EVIL = "no\x1b]0;pwned\x07\x1b[2J\x1b[1;1H\u202eACK ACCEPTED\x9b31m"
EVIL_RTSP = b"RTSP/1.0 200 OK\x1b]0;owned\x07\x1b[2J\x9b31m\r\nCSeq: 1\r\n\r\n"


def _unsafe(text: str) -> list[str]:
    return [c for c in text if c in "\x1b\x07\x9b\u202e"]


def _status(percent: object, device: str = "gate-1") -> dict[str, Any]:
    return {
        "v": 1,
        "site": "main",
        "device": device,
        "state": "online",
        "ts": "2026-01-01T00:00:00.000Z",
        "clock_synced": True,
        "link": {
            "stats": {
                "since": None,
                "transmit": {},
                "availability": {"24h": {}, "7d": {"percent": percent, "observed_s": 7200}},
            }
        },
    }


@pytest.mark.parametrize("where", ["availability", "count"])
def test_hostile__a_huge_integer_in_link_stats_is_a_warning(where: str) -> None:
    doc = _status(10**400 if where == "availability" else 99.0)
    if where == "count":
        doc["link"]["stats"]["transmit"] = {"b:1": {"1h": {"count": 10**400, "p95_ms": 1}, "31d": {}}}
    lines = FleetView().feed("campus/main/gate-1/status", json.dumps(doc).encode(), time.time(), retained=True)
    assert any("link.stats" in ln.text for ln in lines)


def test_hostile__a_retained_status_with_a_huge_integer_does_not_end_the_monitor(broker: Broker) -> None:
    dev = unique_id("gate")
    c = Central(broker.port, topics=("x/unused",))
    try:
        c.publish(f"campus/main/{dev}/status", json.dumps(_status(10**400, dev)), retain=True)
        target = Target(LinkSettings((BrokerAddress("127.0.0.1", broker.port),), connect_timeout_s=3))
        rc = run_monitor(target, MonitorOptions(duration_s=1.5, table_every_s=0), out=io.StringIO(), err=io.StringIO())
        assert rc == 0
    finally:
        c.publish(f"campus/main/{dev}/status", b"", retain=True)
        c.close()


def test_hostile__a_message_the_monitor_cannot_read_is_a_warning_line() -> None:
    from agent.central import session

    def boom(*_a: object, **_k: object) -> list[Any]:
        raise ValueError("nobody foresaw this \x1b[2J")

    out = io.StringIO()
    s = session._Session.__new__(session._Session)  # only what _incoming uses
    s.fleet, s.out = FleetView(), out
    s.opts = MonitorOptions(duration_s=0, table_every_s=0)
    s.fleet.feed = boom  # type: ignore[method-assign]
    s._incoming(Incoming("campus/main/g\x1b/status", b"{}", False, time.time()))
    assert "was not read (ValueError" in out.getvalue()
    assert not _unsafe(out.getvalue())


def test_hostile__ack_prints_a_devices_refusal_reason_escaped(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = unique_id("gate")
    fake = Central(broker.port, topics=(f"campus/main/{dev}/cmd/ack",))

    def answer() -> None:
        m = fake.wait_for(lambda m: m.topic.endswith("/cmd/ack"), timeout=10)
        cmd = json.loads(m.payload)
        reply = {"v": 1, "cmd_id": cmd["id"], "ok": False, "error": EVIL * 50, "ts": "2026-01-01T00:00:00.000Z"}
        fake.publish(f"campus/main/{dev}/reply", json.dumps(reply))

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        rc = main(
            ["ack", "0" * 32, "--device", f"main/{dev}", "--broker", f"127.0.0.1:{broker.port}", "--timeout", "5"]
        )
    finally:
        t.join(10)
        fake.close()
    out = capsys.readouterr().out
    assert rc == 1
    assert "REFUSED" in out
    assert not _unsafe(out), out
    assert len(out) < 2000, "a device's reason is cut"


def test_hostile__an_events_source_is_cut_so_a_device_cannot_forge_lines_by_wrapping() -> None:
    forged = "x" + " " * 119 + "12:00:00.000  main/other-gate      panic   from button  seq 7  id " + "f" * 32
    doc = {
        "v": 1,
        "id": new_id(),
        "seq": 1,
        "site": "main",
        "device": "gate-1",
        "type": "panic",
        "source": forged * 200,
        "test": False,
        "ts": "2026-01-01T00:00:00.000Z",
        "clock_synced": True,
        "data": {},
    }
    lines = FleetView().feed("campus/main/gate-1/event/panic", json.dumps(doc).encode(), time.time())
    assert len(lines[-1].text) < 400


def _cam(kind: CameraKind, url: str) -> CameraConfig:
    return cam_cfg(kind, url, timeout_s=2.0)


class _RtspServer:
    """One RTSP answer with control characters in its status line, on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"rtsp://127.0.0.1:{self.sock.getsockname()[1]}/s"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(EVIL_RTSP)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


def test_hostile__a_cameras_rtsp_status_line_is_escaped_in_status_doctor_and_log() -> None:
    srv = _RtspServer()
    try:
        result = probe_rtsp(_cam(CameraKind.RTSP, srv.url))
    finally:
        srv.close()
    assert not _unsafe(result.detail), repr(result.detail)
    srv = _RtspServer()
    try:
        line = check_camera(_cam(CameraKind.RTSP, srv.url)).line()
    finally:
        srv.close()
    assert not _unsafe(line), repr(line)


class _EvilHttp(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/\x1b]0;owned\x07\x1b[2Jhtml")
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"oops")

    def log_message(self, *_a: object) -> None:
        pass


def test_hostile__a_cameras_content_type_is_escaped() -> None:
    srv = http.server.HTTPServer(("127.0.0.1", 0), _EvilHttp)
    t = threading.Thread(target=srv.handle_request, daemon=True)
    t.start()
    try:
        result = probe_http(_cam(CameraKind.HTTP_SNAPSHOT, f"http://127.0.0.1:{srv.server_port}/snap.jpg"))
    finally:
        t.join(5)
        srv.server_close()
    assert not result.ok
    assert not _unsafe(result.detail), repr(result.detail)


def test_hostile__status_scrubs_every_line_it_prints() -> None:
    reply = {
        "status": {
            "site": "main",
            "device": "gate-1",
            "clock_synced": True,
            "agent": {"version": "x", "uptime_s": 1},
            "link": {"stats": None},
            "outbox": {"pending": 0, "oldest_age_s": None, "dropped": 0},
            "inputs": {},
            "cameras": {"cam": {"ok": True, "detail": "RTSP/1.0 200 OK\x1b[2J in 3 ms"}},
        },
        "link": {"connected": False, "last_error": "broker said \x9b31m"},
        "recent_events": [],
    }
    assert not _unsafe(format_status(reply))
