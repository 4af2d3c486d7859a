"""The outbox's SQLite plumbing: durable connections, the schema, opening with recovery, the seq counter.

Kept apart from :mod:`agent.outbox` (what is stored and when) so each stays
small; nothing here decides policy beyond "seq never goes back".
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent.errors import OutboxError
from agent.outbox_lanes import LANE_INDEX
from agent.outbox_recovery import CorruptError, is_corruption, move_aside, salvage_leftovers
from agent.statefile import SEQ_MARGIN

SCHEMA_VERSION = 1
_WAL_AUTOCHECKPOINT_PAGES = 100
_JOURNAL_SIZE_LIMIT = 1024 * 1024
_FULL_BYTES = 1024 * 1024  # less free than this when an open fails: the disk is the cause
_CACHE_KIB = 256  # page cache per connection; SQLite's 2 MB default stays allocated after a big drain

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    alarm INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_evictable ON outbox (alarm, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class IntakeRecovery:
    """Blocks of the intake the disk would not read at start: alarms in them may never be sent."""

    moved_aside: Path | None  # no block could be read: the whole file went there
    unreadable_blocks: int


@dataclass(frozen=True)
class Recovery:
    """What opening found: shown in ``agent_started`` and logged."""

    pending: int
    moved_aside: Path | None
    salvaged: int
    reason: str | None = None  # why the file was moved aside (SQLite's words)
    seq_mark: int | None = None  # the state file's mark, when seq had to jump over it
    seq_resumed_above: int | None = None
    intake: IntakeRecovery | None = None  # set by the outbox, which opens the intake


def is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the cap (``max_page_count``) or the disk; both mean "evict, or hold"."""
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL"


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def last_seq(conn: sqlite3.Connection) -> int:
    """The highest seq this file has given out: its counter, or a row above it (the counter edited by hand)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    top = conn.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
    return max(int(row[0]) if row else 0, int(top or 0))


def raise_seq(conn: sqlite3.Connection, top: int) -> None:
    """Make the file's counter (``sqlite_sequence``) at least ``top`` (inside the caller's transaction)."""
    if conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox' AND seq < ?", (top, top)).rowcount:
        return
    if conn.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'outbox'").fetchone() is None:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (top,))


def connect(path: Path, busy_s: float) -> sqlite3.Connection:
    """WAL + synchronous=FULL: a commit survives a power cut; a small WAL keeps a full disk deletable."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_s)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    return conn


def close_checkpointed(conn: sqlite3.Connection) -> None:
    """Fold the WAL back into the database file (best effort), then close: no -wal or -shm is left behind."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _open_checked(path: Path, busy_s: float) -> tuple[sqlite3.Connection, bool]:
    """The checked connection, and whether its outbox table is new (a missing, empty or emptied file)."""
    conn = connect(path, busy_s)
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise CorruptError(f"quick_check: {result}")
        new = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone() is None
        conn.executescript(_SCHEMA)
        conn.executescript(LANE_INDEX)  # also upgrades an outbox written before the alarm lane
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise OutboxError(
                f"{path} has outbox schema {version}, this agent knows {SCHEMA_VERSION}; "
                "install the matching agent version",
            )
    except BaseException:
        conn.close()
        raise
    return conn, new


def owner(path: Path) -> str | None:
    """``site/device`` an existing outbox file was written for; None when new, older, or unreadable here."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)  # a ? or # in the path is quoted
    except sqlite3.Error:
        return None
    try:
        return owner_in(conn)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def owner_in(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'device'").fetchone()
    return str(row[0]) if row is not None else None


def claim(conn: sqlite3.Connection, who: str) -> None:
    """Write ``site/device`` into a file that has none yet; inside the caller's transaction."""
    conn.execute("INSERT INTO meta (key, value) VALUES ('device', ?) ON CONFLICT(key) DO NOTHING", (who,))


def intake_in_use(conn: sqlite3.Connection) -> bool:
    """Whether this file's outbox keeps an intake beside it (so losing that file loses seqs)."""
    return conn.execute("SELECT 1 FROM meta WHERE key = 'intake'").fetchone() is not None


def set_intake_in_use(conn: sqlite3.Connection, *, used: bool) -> None:
    """Record whether an intake is in use; inside the caller's transaction."""
    if used:
        conn.execute("INSERT INTO meta (key, value) VALUES ('intake', 1) ON CONFLICT(key) DO NOTHING")
    else:
        conn.execute("DELETE FROM meta WHERE key = 'intake'")


def _open_hint(path: Path) -> str:
    """What a technician should look at: a full disk (SQLite says only "disk I/O error" then), else access."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < _FULL_BYTES:
        return f"the disk holding it is full ({free // 1024} KiB free): free space there (old logs, photos)"
    return "check the folder exists and is writable by this user"


def open_or_recover(
    path: Path, busy_s: float, seq_mark: int, outside_top: int = 0, *, intake_new: bool = False
) -> tuple[sqlite3.Connection, Recovery]:
    """Open ``path``; move a corrupt file aside and salvage it; keep seq above ``seq_mark``.

    ``outside_top``: the highest seq kept outside SQLite (the intake's), which
    counts as the file's own when it is compared with the mark.  When either
    half of the outbox is new while a mark exists (``path`` held no outbox
    table: missing, or emptied in place; or it was moved aside; or
    ``intake_new``, the intake file was created, cut short, moved aside or
    cannot vouch for its top (``Found.lost_top``: damaged, or no block
    readable), and the file says an intake was in use), the other half's top
    proves nothing: seqs the lost half gave out after the mark was saved are
    unknown, so seq resumes above the mark or the top, whichever is higher.

    Restartable: salvage looks for every moved-aside file not yet salvaged,
    so a crash between moving a file and the salvage commit loses nothing.
    """
    reason: str | None = None
    try:
        try:
            conn, db_new = _open_checked(path, busy_s)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise OutboxError(f"cannot open outbox {path}: {exc}; {_open_hint(path)}") from exc
            reason = " ".join(str(exc).split())  # quick_check's report spans lines; a log line must not
            move_aside(path, exc)
            conn, db_new = _open_checked(path, busy_s)
    except OutboxError:
        raise
    except OSError as exc:
        raise OutboxError(f"cannot open outbox {path}: {exc}; {_open_hint(path)}") from exc
    try:
        aside, salvaged = salvage_leftovers(path, conn)
        top = max(last_seq(conn), outside_top)
        part_new = db_new or reason is not None or aside is not None or (intake_new and intake_in_use(conn))
        if seq_mark > top:
            floor: int | None = seq_mark + SEQ_MARGIN
        elif seq_mark > 0 and part_new:
            floor = top + SEQ_MARGIN
        else:
            floor = None
        if floor is not None:
            # Below the state file's mark: not the file the mark came from (deleted, replaced, moved).
            conn.execute("BEGIN IMMEDIATE")
            raise_seq(conn, floor)
            conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    if aside is not None and reason is None:
        reason = "left moved aside by an earlier start that stopped before salvaging it"
    return conn, Recovery(
        pending=count(conn),
        moved_aside=aside,
        salvaged=salvaged,
        reason=reason,
        seq_mark=seq_mark if floor is not None else None,
        seq_resumed_above=floor,
    )
