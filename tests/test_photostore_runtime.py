"""A photos.db that fails while open: the status says so, and it is reopened (moved aside if damaged) after the backoff.

A hunt found :attr:`PhotoStore.error` set only when opening failed: pages
damaged under the open connection (or an I/O error, a read-only remount) made
every still fail with ``store_error`` while the status's ``photos.error`` stayed
absent, and the damaged file was only moved aside at the next restart.

The damage here is real: bytes written over the file's pages behind SQLite's
back, then a commit from a second connection (another process would do the
same) so the store's page cache is reloaded from the damaged file.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import OutboxError
from agent.photos import Photos
from agent.photostore import Photo, PhotoStore
from agent.photostore_file import RETRY_FIRST_S
from agent.snapshots import Snapshots
from tests.support.agentproc import write_config
from tests.support.snapcam import SnapCamera, make_jpeg
from tests.support.waiting import eventually
from tests.test_snapshots import Outcome, cam_cfg, snap_cfg

KB = 1024
PAGE = 4096


def photo(event: str, seed: int = 0) -> Photo:
    return Photo(event, "gate-cam", make_jpeg(20 * KB, seed), taken=1_800_000_000.0 + seed)


def damage(path: Path) -> None:
    """Overwrite every page but the header page, then commit from elsewhere so the open connection rereads them."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(PAGE)
        f.write(b"\xa5" * (size - PAGE))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("PRAGMA user_version = 7")  # page 1 only, through the WAL
    finally:
        other.close()


def test_photostore_runtime__damaged_under_the_connection_sets_error_then_moves_aside_after_backoff(
    tmp_path: Path,
) -> None:
    path = tmp_path / "photos.db"
    now = [1000.0]
    with PhotoStore(path, wall=lambda: 1234.0, mono=lambda: now[0]) as store:
        for i in range(3):
            store.put(photo(f"e{i}", seed=i))
        damage(path)
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            store.put(photo("e3", seed=3))
        why = store.error or ""
        assert why.startswith("photos.db unavailable (DatabaseError: database disk image is malformed"), why
        assert store.oldest() is None  # the sender neither fails nor reads the damaged file
        with pytest.raises(OutboxError, match=r"next try in 30 s"):
            store.put(photo("e4", seed=4))  # within the backoff: no reopen, no quick_check
        assert not list(tmp_path.glob("photos.db.damaged-*"))
        now[0] += RETRY_FIRST_S
        store.put(photo("e5", seed=5))  # reopened as at start: the damaged file moved aside, a new one begun
        assert store.error is None
        assert (tmp_path / "photos.db.damaged-1234").exists()
        assert [(p.event_id, p.camera) for p in store.pending()] == [("e5", "gate-cam")]
        assert store.stats().pending == 1


def test_photostore_runtime__the_status_shows_a_store_that_failed_after_start(tmp_path: Path) -> None:
    """docs/contract.md: ``photos.error`` is shown while photos.db cannot be used, not only when it never opened."""
    cfg = load_config(
        write_config(
            tmp_path,
            1,
            device="gate-1",
            inputs=[{"name": "panic", "kind": "panic_button", "pin": 17, "snapshot": ["gate-cam"]}],
            cameras=[{"name": "gate-cam", "kind": "http_snapshot", "url": "http://127.0.0.1:9/x.jpg", "timeout_s": 2}],
        )
    )
    photos = Photos(cfg, wake=lambda: None, on_failed=lambda *_: None, locks=None, wall=time.time)
    try:
        photos.store.put(photo("e0"))
        assert "error" not in photos.status()
        damage(photos.store.path)
        with pytest.raises(sqlite3.DatabaseError):
            photos.store.put(photo("e1", seed=1))
        assert photos.status()["error"].startswith("photos.db unavailable (DatabaseError: "), photos.status()
    finally:
        photos.close()


def test_photostore_runtime__a_busy_file_is_not_a_failure(tmp_path: Path) -> None:
    """Another process writing the file makes a delete wait, not the store unusable for 30 s."""
    path = tmp_path / "photos.db"
    with PhotoStore(path) as store:
        store.put(photo("e0"))
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                store.try_ack("e0", "gate-cam")
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert store.error is None
        assert store.try_ack("e0", "gate-cam")  # at once: no backoff
        assert store.pending() == []


def test_photostore_runtime__an_idle_camera_worker_reopens_the_store_after_the_backoff(tmp_path: Path) -> None:
    """Photos waiting in a file that failed go out again without waiting for the next alarm's still."""
    path = tmp_path / "photos.db"
    fast = itertools.count(0.0, RETRY_FIRST_S + 1)  # each reading a backoff later: every reopen is due at once
    camera = SnapCamera().start()
    try:
        with PhotoStore(path, wall=lambda: 1234.0, mono=lambda: next(fast)) as store:
            for i in range(3):
                store.put(photo(f"e{i}", seed=i))
            damage(path)
            out = Outcome()
            cams = (cam_cfg(url=camera.url),)
            with Snapshots(cams, snap_cfg(), store, on_stored=out.on_stored, on_failed=out.on_failed) as snaps:
                snaps.start()
                snaps.request("a" * 32, "panic")
                out.wait(1)
                assert [f[2] for f in out.failed] == ["store_error"], out.failed
                eventually(lambda: store.error is None, what="the store reopened by the idle worker")
            assert (tmp_path / "photos.db.damaged-1234").exists()
            assert store.pending() == []
    finally:
        camera.stop()
