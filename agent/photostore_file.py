"""The photo store's file: opening it, moving a damaged one aside, and waiting out a file that fails.

Mixed into :class:`agent.photostore.PhotoStore` (one object, one lock, one
connection): what is stored and when is the store's (its module docstring);
this is what it does about the file under it.

A damaged file (SQLite says corrupt, or ``quick_check`` fails) is moved
aside (``photos.db.damaged-<time>``) and a new one started: photos are
evidence, but never worth stopping the agent for.  A file that cannot be
opened for any other reason (a full disk, an I/O or permission error) is left
as it is: the store runs without it (:attr:`PhotoStore.error`; every still is
reported ``store_error``) and tries again after a backoff
(:data:`RETRY_FIRST_S` doubling to :data:`RETRY_MAX_S`), on a camera worker
(at a still, or idle: :meth:`PhotoStore.reopen`), never on the sender's
thread: an open runs ``quick_check``, seconds of disk reads on a big file,
which no still should pay for again and again beside the button's path.  A file that fails later,
while open (an I/O error, a read-only remount, pages damaged under the
connection), is treated the same: the connection is dropped, :attr:`error`
says why, and the file is opened again after the same backoff, with the same
recovery (a damaged one is moved aside then).  A busy file (another process
writing it) or a full disk is not the file's failure: the call fails, the
connection stays (the sender keeps a delete it could not make in memory).

Each file carries a random id (``meta`` key ``file``), so the store can tell
a reopened file from a new one: a new file numbers its photos from 1 again,
and a late PUBACK for a photo of the old file must not delete the new file's
photo of the same number.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import OutboxError, printable
from agent.outbox_recovery import CorruptError, is_corruption

log = logging.getLogger("agent.photostore")  # the lines a technician reads keep their logger

_SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    part INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    taken_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    jpeg BLOB NOT NULL,
    UNIQUE (event_id, camera)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
RETRY_FIRST_S = 30.0  # an unopenable photos.db is tried again this long after the first failure ...
RETRY_MAX_S = 600.0  # ... doubling after each failure up to this


class PhotoFile:
    """The file half of :class:`~agent.photostore.PhotoStore`; each method runs under its lock unless it says."""

    if TYPE_CHECKING:  # the store's own state, which these methods share
        path: Path
        error: str | None
        _wall: Callable[[], float]
        _mono: Callable[[], float]
        _retry_s: float
        _retry_at: float
        _lock: threading.Lock
        _closed: bool
        _conn: sqlite3.Connection | None
        _counts: tuple[int, int, int]
        file_id: int

    def _open(self) -> None:
        """Open the file, or remember why not (:attr:`error`): a store that cannot open never stops the agent."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._open_or_move_aside()
            try:
                row = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM photos").fetchone()
                got = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
                file_id = _file_id(conn)
            except sqlite3.Error:
                conn.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            self._open_failed(exc)
            return
        if self.error is not None:
            log.warning("photo store %s is available again", self.path)
        self._conn, self.error, self.file_id = conn, None, file_id
        self._retry_s = RETRY_FIRST_S
        self._counts = (int(row[0]), int(row[1]), int(got[0]) if got else 0)

    def _open_failed(self, exc: BaseException) -> None:
        """Remember why, and when to try again: each attempt may read the whole file (``quick_check``)."""
        first = self.error is None
        self.error = printable(f"{self.path.name} unavailable ({type(exc).__name__}: {exc})")
        self._retry_at = self._mono() + self._retry_s
        if first:
            log.error(
                "photo store %s: %s; stills are reported store_error until it opens, tried again in %g s "
                "and less often after each failure (alarms are not affected)",
                self.path,
                self.error,
                self._retry_s,
            )
        else:
            log.info("photo store %s still unavailable; next try in %g s", self.path, self._retry_s)
        self._retry_s = min(2 * self._retry_s, RETRY_MAX_S)

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """Under the lock: a working file that fails (I/O, read-only, damaged) is dropped until its backoff is over.

        Without this, :attr:`error` stayed unset while every still failed, and a
        file damaged at runtime was never moved aside until a restart.
        """
        try:
            yield
        except sqlite3.Error as exc:
            if not _passing(exc) and self._conn is not None:
                conn, self._conn = self._conn, None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                self._open_failed(exc)
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            conn.execute("PRAGMA auto_vacuum=FULL")  # only takes effect on a new file: dropped photos give space back
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise CorruptError("quick_check failed")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_or_move_aside(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise  # a full disk, an I/O or permission error: the file may be fine, never move it
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(self._wall())}")
            n = 1
            while aside.exists():  # a Pi without a battery clock repeats its seconds after a power cut
                aside = self.path.with_name(f"{self.path.name}.damaged-{int(self._wall())}-{n}")
                n += 1
            log.warning(
                "photo store %s is damaged (%s); moved aside to %s, starting an empty one (alarms are "
                "not affected: they live in the outbox)",
                self.path,
                exc,
                aside,
            )
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{self.path}{suffix}").rename(f"{aside}{suffix}")
            return self._connect()

    def _live(self, *, reopen: bool = True) -> sqlite3.Connection:
        """The connection (under the lock); with ``reopen``, an unopened file is tried once its backoff is over."""
        if self._closed:
            raise OutboxError(f"photo store {self.path} is closed")
        if self._conn is None and reopen and self._mono() >= self._retry_at:
            self._open()
        if self._conn is None:
            left = max(0.0, self._retry_at - self._mono())
            why = self.error or f"photo store {self.path} unavailable"
            raise OutboxError(f"{why}; next try in {left:.0f} s")
        return self._conn

    def reopen_in(self) -> float | None:
        """Seconds (0: now) until the dropped or unopened file is tried again; None while it is open or closed."""
        if self._conn is not None or self._closed:
            return None
        return max(0.0, self._retry_at - self._mono())

    def reopen(self) -> None:
        """Try the file again once its backoff is over, so photos waiting in it go out without a new still.

        A camera worker calls it when idle: an open may take seconds (``quick_check``).
        """
        with self._lock:
            if self._conn is None and not self._closed and self._mono() >= self._retry_at:
                self._open()


def _file_id(conn: sqlite3.Connection) -> int:
    """The file's own id, given once (a file from before ids gets one now); read-only unless missing."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'file'").fetchone()
    if row is not None:
        return int(row[0])
    made = secrets.randbits(62)
    conn.execute("INSERT INTO meta (key, value) VALUES ('file', ?)", (made,))
    return made


def _passing(exc: sqlite3.Error) -> bool:
    """Another process holds the file, or the disk is full: the file is fine, only this call failed."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL")) or "database is locked" in str(exc)
