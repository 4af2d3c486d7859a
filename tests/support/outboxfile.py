"""Read what an agent left on disk, as its next start would find it: SQLite's rows and the intake's live blocks.

A test that kills the agent and looks at its files must look at both: an
event is durable once either holds it (agent/outbox_intake.py).  Read only:
neither file is changed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from agent.outbox import Outbox
from agent.outbox_intake import LIVE, SLOT_BYTES, decode


def intake_path(db: Path) -> Path:
    return db.with_name(db.name + ".intake")


def intake_live(db: Path) -> dict[str, tuple[int, str]]:
    """id -> (seq, type) of the intake's blocks not yet done."""
    path = intake_path(db)
    if not path.exists():
        return {}
    data = path.read_bytes()
    found = {}
    for at in range(0, len(data), SLOT_BYTES):
        got = decode(data[at : at + SLOT_BYTES])
        if got is not None and got[0] == LIVE:
            found[got[1].id] = (got[1].seq, got[1].type)
    return found


def pending(db: Path) -> dict[str, tuple[int, str]]:
    """id -> (seq, type) of every event a restart would send, checking SQLite's integrity on the way."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        found = {i: (s, t) for i, s, t in conn.execute("SELECT id, seq, type FROM outbox")}
    for event_id, (seq, type_) in intake_live(db).items():
        found.setdefault(event_id, (seq, type_))
    return found


def abandon(ob: Outbox) -> None:
    """The process ends here: its files close, nothing moves into SQLite, nothing more is synced.

    Closing the SQLite connections folds their WAL into the file, so for SQLite
    this is a crash of the agent alone, not a power cut; a child process that
    leaves with ``os._exit`` is the stronger crash (tests/crash/).
    """
    if ob._intake is not None:
        ob._intake.close()
    ob._acks._conn.close()
    ob._conn.close()
    ob._closed = True
