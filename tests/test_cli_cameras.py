"""`campus-agent status`: a camera's verdict as the technician at the gate reads it.

The contract's camera ``ok`` is ``null`` until the first probe has run; it was
printed as FAULT, sending a technician after a camera fault that does not exist.
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
        (None, "not checked yet", "not probed yet"),
        (None, "not probed: busy with a still for 5 s", "not probed yet"),
    ],
)
def test_format_status__camera_verdict(ok: bool | None, detail: str, verdict: str) -> None:
    shown = format_status(_reply({"ok": ok, "checked": None, "detail": detail}))
    [line] = [ln for ln in shown.splitlines() if ln.startswith("camera")]
    assert line.split(None, 2)[2].startswith(verdict)
    assert detail in line
    assert ("FAULT" in line) is (ok is False)
