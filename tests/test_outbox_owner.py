"""An outbox written by another device is moved aside unsent, never sent as this device's.

A cloned SD card given its own device id (or a device renamed) used to send
the other device's waiting alarm on this device's topic with the other
device's name in its body.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.events import Event, EventType
from agent.outbox import Outbox
from tests.support.clocks import synced_clock
from tests.support.outboxfile import abandon, intake_path

CLOCK = synced_clock()


def press() -> Event:
    return Event.create(CLOCK, EventType.PANIC, "panic", data={"pin": 17})


@pytest.mark.parametrize("intake", [True, False])
def test_outbox_owner__another_devices_waiting_events_are_moved_aside_not_sent(
    tmp_path: Path, intake: bool, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="main", device="gate-north-1", intake=intake)
    theirs = ob.put_row(press())  # the link is down: waiting
    abandon(ob)
    with caplog.at_level(logging.CRITICAL), Outbox(db, site="main", device="gate-south-2", intake=intake) as clone:
        assert clone.next_batch(0, 10) == [], "nothing of gate-north-1's is sent as gate-south-2's"
        assert "was written by device main/gate-north-1, not main/gate-south-2" in caplog.text
        mine = clone.put_row(press())
        assert json.loads(mine.payload)["device"] == "gate-south-2"
    kept = [f for f in tmp_path.iterdir() if ".foreign-" in f.name]
    assert any(f.name.endswith(".intake") for f in kept) is intake
    with Outbox(db, site="main", device="gate-south-2", intake=intake) as again:
        assert [r.id for r in again.next_batch(0, 10)] == [mine.id], "its own outbox is kept as it is"
    aside = next(f for f in kept if not f.name.endswith(("-wal", "-shm", ".intake")))
    with Outbox(aside, site="main", device="gate-north-1", intake=intake) as original:
        assert theirs.id in {r.id for r in original.next_batch(0, 10)}, "kept for inspection, whole"
    assert intake_path(db).exists() is intake


def test_outbox_owner__an_outbox_from_before_the_owner_was_written_is_taken_as_it_is(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "outbox.db"
    with Outbox(db, site="main", device="gate-1", intake=False) as ob:
        waiting = ob.put_row(press())
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'device'")
    with Outbox(db, site="main", device="gate-1", intake=False) as again:
        assert [r.id for r in again.next_batch(0, 10)] == [waiting.id]


def test_outbox_owner__a_path_with_uri_characters_is_read_right(tmp_path: Path) -> None:
    """The owner check built a ``file:`` URI from the raw path: a ``?`` or ``#`` in it read another file."""
    folder = tmp_path / "odd?name#1%20"
    folder.mkdir()
    db = folder / "outbox.db"
    ob = Outbox(db, site="main", device="gate-north-1", intake=False)
    ob.put_row(press())
    abandon(ob)
    with Outbox(db, site="main", device="gate-south-2", intake=False) as clone:
        assert clone.next_batch(0, 10) == [], "recognised as another device's"
