"""Photos at the edges of the agent's life: an alarm recorded while it stops, a photo store it cannot open."""

from __future__ import annotations

import time
from pathlib import Path

from agent.cli import format_status
from agent.config import load_config
from agent.photos import Photos
from tests.central.test_monitor import status
from tests.support.agentproc import write_config
from tests.test_snapshots import Outcome


def make(tmp_path: Path, out: Outcome) -> Photos:
    cfg = load_config(
        write_config(
            tmp_path,
            1,
            device="gate-1",
            inputs=[{"name": "panic", "kind": "panic_button", "pin": 17, "snapshot": ["gate-cam"]}],
            cameras=[{"name": "gate-cam", "kind": "http_snapshot", "url": "http://127.0.0.1:9/x.jpg", "timeout_s": 2}],
        )
    )
    return Photos(cfg, wake=lambda: None, on_failed=out.on_failed, locks=None, wall=time.time)


def test_photos__alarm_recorded_after_close_is_reported_stopped(tmp_path: Path) -> None:
    """The daemon closes photos before the inputs' last poll: a press then got no photo and no snapshot_failed."""
    out = Outcome()
    photos = make(tmp_path, out)
    photos.start()
    photos.close()
    photos.request("b" * 32, "panic")
    assert [f[:3] for f in out.failed] == [("b" * 32, "gate-cam", "stopped")]


def test_photos__status_says_when_the_store_cannot_be_opened(tmp_path: Path) -> None:
    """A photo store that cannot open is a degraded mode the status shows, not a failed start."""
    out = Outcome()
    db = tmp_path / "photos.db"
    db.mkdir()  # not a file SQLite can open; nothing to move aside either
    photos = make(tmp_path, out)
    try:
        assert photos.store.path == db
        st = photos.status()
        assert (st["pending"], st["bytes"], st["dropped"]) == (0, 0, 0)
        assert st["error"].startswith("photos.db unavailable (OperationalError: "), st
        assert db.is_dir()
        reply = {"status": {**status(), "photos": st}, "link": {"connected": False, "last_error": None}}
        shown = format_status(reply)  # what `campus-agent status` prints of it
        assert "photos   STORE UNUSABLE: photos.db unavailable" in shown
    finally:
        photos.close()
