"""`campus-agent status`: a camera's verdict as the technician at the gate reads it.

The contract's camera ``ok`` is ``null`` until the first verdict (``fail_after``
failed probes in a row, or one good one); it was printed as FAULT, sending a
technician after a camera fault that does not exist, then as "not probed yet"
while probes were failing.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli import format_status


def _reply(camera: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": {
            "site": "main",
            "device": "gate-1",
            "clock_synced": True,
            "agent": {"version": "0.1.0", "boot_id": "b" * 32, "uptime_s": 3},
            "link": {"connected_since": None, "reconnects": 0},
            "outbox": {"pending": 0, "oldest_age_s": None, "dropped": 0},
            "inputs": {},
            "cameras": {"gate-cam": camera},
        },
        "link": {"connected": False, "last_error": None},
        "recent_events": [],
    }


@pytest.mark.parametrize(
    ("ok", "detail", "verdict"),
    [
        (True, "200 image/jpeg 48213 bytes in 41 ms", "ok"),
        (False, "connection refused", "FAULT"),
        (None, "not checked yet", "no verdict yet"),
        (None, "not probed: busy with a still for 5 s", "no verdict yet"),
        (None, "connection refused by 127.0.0.1:1: camera off or wrong port", "no verdict yet"),
    ],
)
def test_format_status__camera_verdict(ok: bool | None, detail: str, verdict: str) -> None:
    shown = format_status(_reply({"ok": ok, "checked": None, "detail": detail}))
    [line] = [ln for ln in shown.splitlines() if ln.startswith("camera")]
    assert line.split(None, 2)[2].startswith(verdict)
    assert detail in line
    assert ("FAULT" in line) is (ok is False)
