"""A late PUBACK for a photo of a photos.db moved aside at runtime never deletes a photo of the new file.

A review found the store remembering handed copies by seq alone: the new file
numbers its photos from 1 again, so the PUBACK of the old file's photo (kept
by the sender while the store was unavailable, retried after the reopen)
deleted the new file's first photo, unsent.  Each file now carries an id, and
a handed copy is remembered with it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from agent.photosend import PhotoDrain
from agent.photostore import PhotoStore
from agent.photostore_file import RETRY_FIRST_S
from tests.test_photosend import Failures
from tests.test_photostore_runtime import damage, photo

ROOT = "campus/main/gate-1"


def _move_aside_under(store: PhotoStore, path: Path, now: list[float]) -> None:
    """Damage the open file, let a put fail on it, and reopen (moved aside) once its backoff is over."""
    damage(path)
    with pytest.raises(sqlite3.DatabaseError):
        store.put(photo("x", seed=2))
    now[0] += RETRY_FIRST_S
    store.put(photo("new", seed=3))  # the new file: seq 1 again
    assert list(path.parent.glob("photos.db.damaged-*"))


def test_photostore_generation__late_ack_of_an_old_file_photo_deletes_nothing_in_the_new_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "photos.db"
    now = [1000.0]
    with PhotoStore(path, wall=lambda: 1234.0, mono=lambda: now[0]) as store:
        store.put(photo("old", seed=1))
        handed = store.oldest()
        assert handed is not None
        assert handed.event_id == "old"
        _move_aside_under(store, path, now)
        with caplog.at_level(logging.INFO, logger="agent.photostore"):
            assert store.try_ack("old", "gate-cam")
        assert [(p.event_id, p.camera) for p in store.pending()] == [("new", "gate-cam")]
        assert "delivered from a photos.db since moved aside" in caplog.text


def test_photostore_generation__drain_keeps_the_new_file_photo_and_sends_it_next(tmp_path: Path) -> None:
    path = tmp_path / "photos.db"
    now = [1000.0]
    failures = Failures()
    with PhotoStore(path, wall=lambda: 1234.0, mono=lambda: now[0]) as store:
        drain = PhotoDrain(store, ROOT, on_failed=failures)
        store.put(photo("old", seed=1))
        msg = drain.take(events_idle=True)
        assert msg is not None
        drain.sent(7, msg)
        _move_aside_under(store, path, now)
        assert drain.settle(7)  # the old photo's PUBACK, after the new file started
        assert [p.event_id for p in store.pending()] == ["new"]
        nxt = drain.take(events_idle=True)
        assert nxt is not None
        assert dict(nxt.user_properties)["event_id"] == "new"
        assert failures == []


def test_photostore_generation__same_file_reopened_still_deletes_the_handed_copy(tmp_path: Path) -> None:
    path = tmp_path / "photos.db"
    now = [1000.0]
    with PhotoStore(path, mono=lambda: now[0]) as store:
        store.put(photo("a", seed=1))
        assert store.oldest() is not None
        with store._lock, pytest.raises(sqlite3.OperationalError), store._guarded():
            raise sqlite3.OperationalError("disk I/O error")  # dropped, not damaged: the same file reopens
        assert store.error is not None
        now[0] += RETRY_FIRST_S
        store.reopen()
        assert store.reopen_in() is None  # open again
        assert store.try_ack("a", "gate-cam")
        assert store.pending() == []
