"""Recovering an outbox SQLite cannot read: move it aside loudly, salvage what can be read.

Only corruption counts (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, a failed
``quick_check``); a permission or I/O error is reported, never "recovered",
because moving a healthy file aside would hide its events.

Restartable in two steps: the file is renamed to ``<name>.corrupt-<time>``
first, and only after its rows are committed into the new outbox is it
renamed again to ``<name>.corrupt-<time>.salvaged``.  Any ``.corrupt-*`` file
without that suffix was moved but not salvaged (the agent stopped in
between) and is salvaged at the next start.  The new outbox's ``meta`` notes
each file it took rows from, in the commit that took them, so a file whose
final rename failed is never salvaged twice (its rows, delivered and deleted
meanwhile, would be sent again), and the salvage only ever raises the seq
counter, never lowers it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from pathlib import Path

from agent.errors import OutboxError
from agent.statefile import sync_dir

log = logging.getLogger(__name__)

SALVAGED = ".salvaged"


def aside_path(path: Path, tag: str, *, taken: tuple[str, ...] = ("",)) -> Path:
    """``<name>.<tag>-<UTC time>``, numbered on when taken with any of ``taken``'s suffixes.

    A Pi without a battery clock repeats its seconds after a power cut.
    """
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while any(aside.with_name(aside.name + suffix).exists() for suffix in taken):
        aside = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
        n += 1
    return aside


def move_aside(path: Path, exc: Exception) -> Path:
    """Rename the database and its -wal/-shm files to ``<name>.corrupt-<UTC time>``; never delete them."""
    aside = aside_path(path, "corrupt", taken=("", SALVAGED))
    try:
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.rename(Path(f"{aside}{suffix}"))
    except OSError as err:
        raise OutboxError(f"outbox {path} is unreadable ({exc}) and could not be moved aside: {err}") from err
    return aside


def move_foreign(path: Path, intake: Path, owner: str) -> Path:
    """Rename another device's outbox (and its intake) to ``<name>.foreign-<UTC time>``; never salvaged.

    A cloned SD card, or a device given a new id, would otherwise send the
    other device's waiting events on this device's topic with the other
    device's name in them.
    """
    aside = aside_path(path, "foreign")
    try:
        for src, dst in ((Path(f"{path}{x}"), Path(f"{aside}{x}")) for x in ("-wal", "-shm", "")):
            if src.exists():
                src.rename(dst)
        if intake.exists():
            intake.rename(aside.with_name(aside.name + ".intake"))
        sync_dir(path.parent)
    except OSError as err:
        raise OutboxError(f"outbox {path} belongs to {owner} and could not be moved aside: {err}") from err
    return aside


def unsalvaged(path: Path) -> list[Path]:
    """Files moved aside from ``path`` whose rows are not yet committed into an outbox, oldest first."""
    prefix = f"{path.name}.corrupt-"  # a prefix test, not glob: the glob module is memory the daemon keeps
    found = (f for f in path.parent.iterdir() if f.name.startswith(prefix))
    return sorted(f for f in found if not f.name.endswith(("-wal", "-shm", SALVAGED)))


def salvage_leftovers(path: Path, conn: sqlite3.Connection) -> tuple[Path | None, int]:
    """Salvage every unsalvaged moved-aside file into ``conn``; return (the last one, rows salvaged)."""
    last: Path | None = None
    total = 0
    for aside in unsalvaged(path):
        if _taken(conn, aside):  # only its rename is left to do
            _mark_salvaged(aside)
            continue
        total += salvage(aside, conn)
        last = _mark_salvaged(aside)
    return last, total


def _marker(aside: Path) -> str:
    return f"salvaged:{aside.name}"


def _taken(conn: sqlite3.Connection, aside: Path) -> bool:
    """Whether this outbox already holds ``aside``'s rows (an earlier start salvaged it, then failed to rename it)."""
    return conn.execute("SELECT 1 FROM meta WHERE key = ?", (_marker(aside),)).fetchone() is not None


def _mark_salvaged(aside: Path) -> Path:
    done = aside.with_name(aside.name + SALVAGED)
    try:
        for suffix in ("-wal", "-shm", ""):  # the main file last: its name is the marker
            src = Path(f"{aside}{suffix}")
            if src.exists():
                src.rename(Path(f"{done}{suffix}"))
    except OSError as exc:
        log.warning(
            "cannot rename %s after salvaging it (%s); it will be salvaged again at the next start, "
            "which only repeats rows already there",
            aside,
            exc,
        )
        return aside
    return done


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


def salvage(old: Path, conn: sqlite3.Connection, *, seq_floor: int = 0) -> int:
    """Copy every row that can still be read from a moved-aside outbox into ``conn``.

    A damaged page stops a table scan, so the scan only finds the seqs it can;
    then every seq up to the highest known one is read by its primary key, each
    in its own try, so rows after a damaged page are found too.  ``seq`` then
    continues above the highest seq seen (or ``seq_floor``, the high-water mark
    the agent kept outside the database), so it never goes backwards.
    """
    try:
        src = sqlite3.connect(f"{old.resolve().as_uri()}?mode=ro", uri=True)  # a ? or # in the path is quoted
    except sqlite3.Error:
        return _set_top(conn, [], seq_floor, _marker(old))
    try:
        top = _top_seq(src)
        known = _scan_seqs(src)
        top = max([top, *known])
        # Pending rows are the newest ones: probe down to well below the oldest seq the scans found.
        low = max(1, min(known) - _PROBE_BELOW, top - _PROBE_LIMIT) if known else max(1, top - _PROBE_LIMIT)
        rows = []
        for seq in range(low, top + 1):
            row = _read_row(src, seq)
            if row is not None:
                rows.append(row)
    finally:
        src.close()
    return _set_top(conn, rows, max(top, seq_floor), _marker(old))


_PROBE_LIMIT = 1_000_000  # seqs probed one by one at most: seconds on a Pi, once, after corruption
_PROBE_BELOW = 100_000  # how far below the oldest readable seq damaged rows are looked for
_COLUMNS = "seq, id, type, alarm, created_ms, body"


def _top_seq(src: sqlite3.Connection) -> int:
    with contextlib.suppress(sqlite3.Error):
        r = src.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(r[0]) if r else 0
    return 0


def _scan_seqs(src: sqlite3.Connection) -> list[int]:
    seqs: list[int] = []
    for sql in ("SELECT seq FROM outbox INDEXED BY outbox_evictable", "SELECT seq FROM outbox"):
        with contextlib.suppress(sqlite3.Error):
            cur = src.execute(sql)
            while True:
                try:
                    r = cur.fetchone()
                except sqlite3.Error:
                    break
                if r is None:
                    break
                seqs.append(int(r[0]))
    return seqs


def _read_row(src: sqlite3.Connection, seq: int) -> tuple[object, ...] | None:
    try:
        r = src.execute(f"SELECT {_COLUMNS} FROM outbox WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
    except sqlite3.Error:
        return None
    return tuple(r) if r is not None else None


def _set_top(conn: sqlite3.Connection, rows: list[tuple[object, ...]], top: int, marker: str) -> int:
    """Insert the salvaged rows, raise the counter to ``top`` and note the file as taken, in one commit."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(f"INSERT OR IGNORE INTO outbox ({_COLUMNS}) VALUES (?,?,?,?,?,?)", rows)  # noqa: S608
        now = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        if now is None and top:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (top,))
        elif now is not None and int(now[0]) < top:
            conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'", (top,))
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, 1)", (marker,))
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return len(rows)
