"""What a device puts in its payload or topic never reaches the operator's terminal raw (issue 14, item 2)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.central.display import escape, json_line
from agent.central.fleet import FleetView
from agent.events import iso_ms, new_id
from tests.central.procout import read_until
from tests.support.broker import Broker
from tests.support.mqtt import Central

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 29, 6, 1, 2, tzinfo=dt.UTC).timestamp()
# A forged "ack accepted" line: return to column 0, cursor up, erase the line, then text.
FORGE = "\r\x1b[1A\x1b[2K06:01:02.000  main/gate-1  ack of panic 0 accepted"
# Control bytes as UTF-8 on the wire: C0 (but \n), DEL, C1 (U+0080-U+009F), bidi and line separators.
_RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]")


def event(dev: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "id": new_id(),
        "seq": seq,
        "site": "main",
        "device": dev,
        "type": "panic",
        "source": "panic",
        "test": False,
        "ts": iso_ms(T0),
        "clock_synced": True,
        "boot_id": "b" * 32,
        "mono_ms": 1000,
        "data": {},
        **fields,
    }


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("panic", "panic"),
        ("a\x1b[2Kb", "a\\x1b[2Kb"),
        ("x\ry\nz\t", "x\\ry\\nz\\t"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI: one byte that many terminals obey
        ("left\u202eright", "left\\u202eright"),  # bidi override: reorders what follows
        ("line\u2028sep", "line\\u2028sep"),
        ("a\\x1b", "a\\\\x1b"),  # a literal backslash cannot pass for an escape
        ("Gebäude Nord ☃", "Gebäude Nord ☃"),
        ("\x7f", "\\x7f"),
    ],
)
def test_escape__valid(text: str, shown: str) -> None:
    assert escape(text) == shown


def test_json_line__control_characters_escaped_and_the_value_kept() -> None:
    for text in ("a\x1b[2K\rb", "\x9b", "\u202e", "\U000e0001", "é"):
        line = json_line({"t": text})
        assert not _RAW_CONTROL.search(line.encode())
        assert json.loads(line)["t"] == text


def test_fleet__event_fields_are_escaped_and_restricted_fields_checked() -> None:
    fleet = FleetView(tz=dt.UTC)
    [line] = fleet.feed("campus/main/gate-1/event/panic", json.dumps(event("gate-1", 1, source=FORGE)).encode(), T0)
    assert "from \\r\\x1b[1A\\x1b[2K06:01:02.000" in line.text
    assert "\x1b" not in line.text
    assert "\r" not in line.text
    [warn] = fleet.feed(
        "campus/main/gate-1/event/panic", json.dumps(event("gate-1", 2, type="panic" + FORGE)).encode(), T0
    )
    assert warn.text.startswith("06:01:02.000  WARNING  campus/main/gate-1/event/panic: type 'panic\\r\\x1b[1A")
    [warn] = fleet.feed("campus/main/gate-1/event/panic", json.dumps(event("gate-1", 3, device="gate-2")).encode(), T0)
    assert "device 'gate-2' is not the topic's ('gate-1'); ignored" in warn.text
    [warn] = fleet.feed("campus/main/gate-1/event/panic", json.dumps(event("gate-1", 4, id="\x1b[2K")).encode(), T0)
    assert "event id '\\x1b[2K' is not 32 hex digits; ignored" in warn.text
    [warn] = fleet.feed("campus/main/gate\x1b[2K/event/panic", json.dumps(event("gate-1", 5)).encode(), T0)
    assert warn.text.startswith("06:01:02.000  WARNING  campus/main/gate\\x1b[2K/event/panic: site or device")
    [warn] = fleet.feed("campus/main/gate-1/status", json.dumps({"state": "on\x1b[2Kline"}).encode(), T0)
    assert "status with state 'on\\x1b[2Kline'" in warn.text


def _hostile_messages(device: str) -> list[tuple[str, dict[str, Any]]]:
    root = f"campus/main/{device}"
    return [
        (f"{root}/event/panic", event(device, 1, source=FORGE)),
        (f"{root}/event/panic", event(device, 2, type="panic" + FORGE)),
        (f"{root}/event/panic", event(device, 3, source="\x9b2K\u202eevil", data={"x": "\x1b]0;title\x07"})),
        (f"{root}/event/tamper", event(device, 4, type="tamper", source="\x1bc")),  # ESC c: reset the terminal
        (
            f"{root}/status",
            {"v": 1, "site": "main", "device": device, "state": "offline", "reason": FORGE, "ts": iso_ms(T0)},
        ),
        (f"{root}/event/panic", event(device, 5, device="gate-1" + FORGE)),  # mosquitto refuses ESC in topics
    ]


@pytest.mark.broker
@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["text", "json"])
def test_monitor__no_raw_control_byte_reaches_the_terminal(broker: Broker, device: str, mode: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "monitor",
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--site",
            "main",
            "--table-every",
            "0.5",
            *mode,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    c = Central(broker.port, topics=("none/#",))
    try:
        assert proc.stderr is not None
        assert b"monitoring " in proc.stderr.readline()
        for topic, doc in _hostile_messages(device):
            c.publish(topic, json.dumps(doc, ensure_ascii=False).encode())
        sentinel = event(device, 6)
        c.publish(f"campus/main/{device}/event/panic", json.dumps(sentinel).encode())
        out = _read_until(proc, sentinel["id"].encode() + b"\n" if not mode else sentinel["id"].encode(), 20)
        out += _read_until(proc, b"unacknowledged", 10)  # and a board with the alarms listed
    finally:
        c.publish(f"campus/main/{device}/status", b"", retain=True)
        c.close()
        proc.terminate()
        proc.wait(10)
    assert _RAW_CONTROL.search(out) is None, out
    assert out.count(b"WARNING" if not mode else b'"kind": "warning"') >= 2  # the forged type and device
    if not mode:
        assert b"\\r\\x1b[1A\\x1b[2K06:01:02.000  main/gate-1  ack of panic 0 accepted" in out


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    """Everything the monitor printed from now until ``needle``."""
    _, out = read_until(proc, lambda buf: needle in buf, timeout, repr(needle))
    return out
