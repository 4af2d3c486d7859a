"""Recovering an outbox SQLite cannot read: move it aside loudly, salvage what can be read.

Only corruption counts (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, a failed
``quick_check``); a permission or I/O error is reported, never "recovered",
because moving a healthy file aside would hide its events.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from pathlib import Path

from agent.errors import OutboxError


def move_aside(path: Path, exc: Exception) -> Path:
    """Rename the database and its -wal/-shm files to ``<name>.corrupt-<UTC time>``; never delete them."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.rename(Path(f"{aside}{suffix}"))
    except OSError as err:
        raise OutboxError(f"outbox {path} is unreadable ({exc}) and could not be moved aside: {err}") from err
    return aside


class CorruptError(sqlite3.DatabaseError):
    """SQLite opened the file but its own check found damage."""


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, CorruptError):
        return True
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    # sqlite3 leaves the code unset for some errors raised while preparing a statement.
    return not name and any(w in str(exc) for w in ("malformed", "not a database"))


def salvage(old: Path, conn: sqlite3.Connection) -> int:
    """Copy what can still be read from a moved-aside outbox; best effort."""
    rows: list[tuple[object, ...]] = []
    top = 0
    try:
        src = sqlite3.connect(f"file:{old}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        with contextlib.suppress(sqlite3.Error):
            r = src.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            top = int(r[0]) if r else 0
        with contextlib.suppress(sqlite3.Error):
            cur = src.execute("SELECT seq, id, type, alarm, created_ms, body FROM outbox ORDER BY seq")
            while True:
                try:
                    row = cur.fetchone()
                except sqlite3.Error:
                    break
                if row is None:
                    break
                rows.append(tuple(row))
    finally:
        src.close()
    top = max([top] + [int(r[0]) for r in rows])  # type: ignore[call-overload]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT OR IGNORE INTO outbox (seq, id, type, alarm, created_ms, body) VALUES (?,?,?,?,?,?)", rows)
    if top:
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'outbox'")
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (top,))
    conn.execute("COMMIT")
    return len(rows)
