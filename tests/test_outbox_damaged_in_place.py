"""Half of the outbox damaged in place, not deleted: seq must still never go back to one the centre has seen.

The checks that catch a deleted file (agent/outbox_db.py ``open_or_recover``)
missed a database emptied to 0 bytes; the intake's cases are in
tests/test_outbox_intake_seq.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.events import Event, EventType
from agent.outbox import Outbox
from tests.support.clocks import synced_clock

CLOCK = synced_clock()


def ev(kind: EventType = EventType.PANIC) -> Event:
    return Event.create(CLOCK, kind, "x", data={"pin": 17})


def _drop_wal(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def test_damaged__an_outbox_db_emptied_to_zero_bytes_does_not_hand_out_its_seqs_again(tmp_path: Path) -> None:
    """`: > outbox.db` to clear a backlog, or a filesystem repair: SQLite opens it as a new database."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, site="s", device="d")
    press = ob.put_row(ev())  # the intake: seq 1, delivered
    ob.ack([press.seq])
    mark = ob.top_seq()
    later = [ob.put_row(ev(EventType.CAMERA_FAULT)) for _ in range(3)]  # SQLite's, after the mark was saved
    ob.close()
    _drop_wal(db)
    os.truncate(db, 0)
    with Outbox(db, site="s", device="d", seq_mark=mark) as again:
        assert again.put_row(ev(EventType.CAMERA_FAULT)).seq > later[-1].seq


def test_damaged__a_reopened_outbox_is_not_taken_for_a_new_one(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d") as ob:
        ob.put_row(ev(EventType.CAMERA_FAULT))
        mark = ob.top_seq()
    with Outbox(db, site="s", device="d", seq_mark=mark) as again:
        assert again.put_row(ev(EventType.CAMERA_FAULT)).seq == mark + 1
