"""The durable photo store: alarm stills waiting for the broker, in a SQLite file of their own.

Kept apart from the outbox on purpose.  A separate file (``photos.db`` beside
``outbox.db``) has its own size cap, so photos can never take an alarm's room:
when the photos reach ``max_mb`` the *oldest photos* are dropped (and counted),
and the outbox is never touched.  SQLite rather than a folder of files because
one transaction covers the JPEG and its metadata (a SIGKILL leaves either the
whole photo or none), the WAL with ``synchronous=FULL`` keeps a committed photo
through a power cut, and oldest-first reads are an index scan.

Each row is one camera's still of one event: ``(event_id, camera)`` is unique,
so a photo stored twice (a retried capture) replaces the first.  ``part`` and
``parts`` number an event's photos in the order its cameras are configured;
they become the ``part`` user property on the wire (``1/2``, ``2/2``).

A damaged file is moved aside (``photos.db.damaged-<time>``) and a new one
started: photos are evidence, but never worth stopping the agent for.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.closing import ClosingFile
from agent.errors import OutboxError
from agent.outbox_db import close_checkpointed

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Photo:
    """One camera's still of one alarm event, ready to store or publish."""

    event_id: str
    camera: str
    jpeg: bytes
    taken: float  # wall clock (s) when the still arrived
    part: int = 1
    parts: int = 1

    def __repr__(self) -> str:  # never dump the bytes into a log line
        return f"Photo({self.event_id}, {self.camera}, {len(self.jpeg)} bytes, part {self.part}/{self.parts})"


@dataclass(frozen=True)
class PhotoStats:
    pending: int
    bytes: int
    cap_bytes: int
    dropped: int


class PhotoStore(ClosingFile):
    """SQLite store of photos waiting for their PUBACK; oldest dropped first beyond ``max_mb``.

    Thread-safe: camera workers :meth:`put`, the sender reads :meth:`pending`
    and calls :meth:`ack`, the heartbeat reads :meth:`stats`.  One connection
    behind one lock; no call waits on the network.

    Args:
        path: the SQLite file, normally ``photos.db`` beside the outbox.
        max_mb: the cap on stored JPEG bytes (MiB).
        wall: the wall clock (s), for the moved-aside file's name.

    """

    def __init__(self, path: Path | str, *, max_mb: float = 50.0, wall: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.cap_bytes = int(max_mb * (1 << 20))
        self._wall = wall
        self._lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._open_or_move_aside()
        row = self._conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM photos").fetchone()
        self._pending, self._bytes = int(row[0]), int(row[1])
        got = self._conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        self._dropped = int(got[0]) if got else 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA auto_vacuum=FULL")  # only takes effect on a new file: dropped photos give space back
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        return conn

    def _open_or_move_aside(self) -> sqlite3.Connection:
        try:
            conn = self._connect()
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                conn.close()
                raise sqlite3.DatabaseError("quick_check failed")
            return conn
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(self._wall())}")
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

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"photo store {self.path} is closed")

    def put(self, photo: Photo) -> list[tuple[str, str]]:
        """Commit ``photo`` durably, dropping the oldest photos to stay under the cap.

        Returns:
            The (event_id, camera) of each photo dropped to make room, oldest first,
            so each can be reported (``snapshot_failed``, reason ``dropped``).

        Raises:
            OutboxError: the store is closed, or the photo alone is larger than the whole cap.
            sqlite3.Error: the disk refused the write (the caller reports ``snapshot_failed``).

        """
        size = len(photo.jpeg)
        if size > self.cap_bytes:
            raise OutboxError(f"photo of {size} bytes is larger than the photo store's cap ({self.cap_bytes} bytes)")
        with self._lock:
            self._check_open()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM photos WHERE event_id = ? AND camera = ?", (photo.event_id, photo.camera))
                total = int(conn.execute("SELECT coalesce(sum(size), 0) FROM photos").fetchone()[0])
                dropped: list[tuple[str, str]] = []
                while total + size > self.cap_bytes:
                    seq, old, eid, cam = conn.execute(
                        "SELECT seq, size, event_id, camera FROM photos ORDER BY seq LIMIT 1"
                    ).fetchone()
                    conn.execute("DELETE FROM photos WHERE seq = ?", (seq,))
                    total -= int(old)
                    dropped.append((str(eid), str(cam)))
                conn.execute(
                    "INSERT INTO photos (event_id, camera, part, parts, taken_ms, size, jpeg) VALUES (?,?,?,?,?,?,?)",
                    (photo.event_id, photo.camera, photo.part, photo.parts, int(photo.taken * 1000), size, photo.jpeg),
                )
                if dropped:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                        (len(dropped),),
                    )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            self._bytes = total + size
            self._pending = int(conn.execute("SELECT count(*) FROM photos").fetchone()[0])
            self._dropped += len(dropped)
        if dropped:
            log.warning(
                "photo store over %d MiB: dropped the %d oldest photo(s) to keep %s",
                self.cap_bytes >> 20,
                len(dropped),
                photo,
            )
        return dropped

    def pending(self, limit: int = 8) -> list[Photo]:
        """The oldest ``limit`` photos still waiting for a PUBACK, oldest first."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT event_id, camera, jpeg, taken_ms, part, parts FROM photos ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [Photo(e, c, bytes(j), t / 1000.0, p, n) for e, c, j, t, p, n in rows]

    def ack(self, event_id: str, camera: str | None = None) -> int:
        """Delete the photo(s) of ``event_id`` (only ``camera``'s when given) after the broker's PUBACK."""
        with self._lock:
            self._check_open()
            if camera is None:
                cur = self._conn.execute("DELETE FROM photos WHERE event_id = ?", (event_id,))
            else:
                cur = self._conn.execute("DELETE FROM photos WHERE event_id = ? AND camera = ?", (event_id, camera))
            gone = int(cur.rowcount)
            if gone:
                row = self._conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM photos").fetchone()
                self._pending, self._bytes = int(row[0]), int(row[1])
            return gone

    def stats(self) -> PhotoStats:
        with self._lock:
            return PhotoStats(self._pending, self._bytes, self.cap_bytes, self._dropped)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            close_checkpointed(self._conn)

    def _repr_state(self) -> str:
        return f"pending={self._pending} bytes={self._bytes}/{self.cap_bytes} dropped={self._dropped}"
