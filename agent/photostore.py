"""The durable photo store: alarm stills waiting for the broker, in a SQLite file of their own.

Kept apart from the outbox on purpose.  A separate file (``photos.db`` beside
``outbox.db``) has its own size cap, so photos can never take an alarm's room:
when the photos reach ``max_mb`` the *oldest photos* are dropped (and counted),
and the outbox is never touched.  SQLite rather than a folder of files because
one transaction covers the JPEG and its metadata (a SIGKILL leaves either the
whole photo or none), the WAL with ``synchronous=FULL`` keeps a committed photo
through a power cut, and oldest-first reads are an index scan.

Each row is one camera's still of one event: ``(event_id, camera)`` is unique,
so a photo stored twice (a retried capture) replaces the first.  A delivery
deletes only the copy the sender was handed (:meth:`PhotoStore.oldest`), never a
newer copy stored under the same key meanwhile: each copy goes on its own
PUBACK, or the retry would be deleted unsent.  Nor a photo of a new file: a
copy handed out before its file was moved aside is remembered with that file's
id, and its late PUBACK deletes nothing from the new file (the photo was
delivered; its row stays in the moved-aside file).  ``part`` and
``parts`` number an event's photos in the order its cameras are configured;
they become the ``part`` user property on the wire (``1/2``, ``2/2``).

A damaged file is moved aside and a new one started; a file that cannot be
opened, or fails while open, is left as it is and tried again after a backoff,
on a camera worker, never on the sender's thread: :mod:`agent.photostore_file`
owns the file, this module what is stored in it.

Photos never take the outbox's room either: a photo is stored only while the
filesystem keeps the outbox's headroom free (``HEADROOM_BYTES``, what it
needs to still delete rows on a full disk), the oldest photos making room.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from agent.closing import ClosingFile
from agent.errors import OutboxError, printable
from agent.outbox import HEADROOM_BYTES
from agent.outbox_db import close_checkpointed
from agent.photostore_file import RETRY_FIRST_S, PhotoFile

log = logging.getLogger(__name__)

_SLACK = 256 * 1024  # bytes beyond a photo's own for SQLite's pages and its WAL, kept free too
_HANDED_MEMORY = 64  # copies handed to the sender and not yet acked, remembered by seq


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


class PhotoStore(PhotoFile, ClosingFile):
    """SQLite store of photos waiting for their PUBACK; oldest dropped first beyond ``max_mb``.

    Thread-safe: camera workers :meth:`put`, the sender takes :meth:`oldest`
    and calls :meth:`try_ack` (both give up at once when a commit holds the
    store, so the sender never waits on it), the heartbeat reads :meth:`stats`
    (no lock).  One connection behind one lock; no call waits on the network.

    Args:
        path: the SQLite file, normally ``photos.db`` beside the outbox.
        max_mb: the cap on stored JPEG bytes (MiB).
        wall: the wall clock (s), for the moved-aside file's name.
        headroom: bytes left free on the filesystem for the outbox beside it.
        mono: the monotonic clock (s) that paces attempts to open an unopenable file.

    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_mb: float = 50.0,
        wall: Callable[[], float] = time.time,
        headroom: int = HEADROOM_BYTES,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.cap_bytes = int(max_mb * (1 << 20))
        self.headroom = headroom
        self.error: str | None = None  # why the file cannot be used now; None while it can
        self._wall = wall
        self._mono = mono
        self._retry_s = RETRY_FIRST_S  # the wait after the next failed open
        self._retry_at = 0.0  # no open is tried before this (monotonic s)
        self.file_id = 0  # the open file's id (meta key ``file``); 0 before any opened
        self._handed: dict[tuple[str, str], tuple[int, int]] = {}  # (event_id, camera) -> (file_id, seq) oldest() gave
        self._lock = threading.Lock()
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._counts = (0, 0, 0)  # pending, bytes, dropped: replaced whole, read without the lock
        self._open()

    def _room(self, stored: int, size: int) -> int:
        """Bytes of photos the store may hold with this one: its cap, or less to leave the outbox its headroom."""
        st = os.statvfs(self.path.parent)
        free = st.f_bavail * st.f_frsize
        return min(self.cap_bytes, stored + free - self.headroom - size - _SLACK)

    def put(self, photo: Photo) -> list[tuple[str, str]]:
        """Commit ``photo`` durably, dropping the oldest photos to stay under the cap and the outbox's headroom.

        Returns:
            The (event_id, camera) of each photo dropped to make room, oldest first,
            so each can be reported (``snapshot_failed``, reason ``dropped``).

        Raises:
            OutboxError: the store is closed or unavailable, or the photo alone is larger than
                the cap or than the room the filesystem has beside the outbox's headroom.
            sqlite3.Error: the disk refused the write (the caller reports ``snapshot_failed``).

        """
        size = len(photo.jpeg)
        if size > self.cap_bytes:
            raise OutboxError(f"photo of {size} bytes is larger than the photo store's cap ({self.cap_bytes} bytes)")
        with self._lock, self._guarded():
            conn = self._live()
            room = self._room(self._counts[1], size)
            if size > room:
                raise OutboxError(
                    f"no room for a photo of {size} bytes: the filesystem of {self.path} keeps "
                    f"{self.headroom >> 20} MiB free for the outbox"
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM photos WHERE event_id = ? AND camera = ?", (photo.event_id, photo.camera))
                total = int(conn.execute("SELECT coalesce(sum(size), 0) FROM photos").fetchone()[0])
                dropped: list[tuple[str, str]] = []
                while total + size > room:
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
            with contextlib.suppress(sqlite3.Error):  # the WAL would otherwise keep up to 4 MiB more of the disk
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pending = int(conn.execute("SELECT count(*) FROM photos").fetchone()[0])
            self._counts = (pending, total + size, self._counts[2] + len(dropped))
        if dropped:
            log.warning(
                "photo store full (%d MiB cap, or the outbox's free space): dropped the %d oldest photo(s) to keep %s",
                self.cap_bytes >> 20,
                len(dropped),
                photo,
            )
        return dropped

    def pending(self, limit: int = 8) -> list[Photo]:
        """The oldest ``limit`` photos still waiting for a PUBACK, oldest first (waits for the store)."""
        with self._lock, self._guarded():
            rows = (
                self._live()
                .execute(
                    "SELECT event_id, camera, jpeg, taken_ms, part, parts FROM photos ORDER BY seq LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        return [Photo(e, c, bytes(j), t / 1000.0, p, n) for e, c, j, t, p, n in rows]

    def oldest(self, skip: Collection[tuple[str, str]] = ()) -> Photo | None:
        """The oldest photo whose (event_id, camera) is not in ``skip``; None if none, or if a commit holds the store.

        Never waits: the sender calls it while events may be waiting behind it.

        Raises:
            OutboxError: the store is closed or unavailable.
            sqlite3.Error: the file could not be read.

        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._conn is None and not self._closed:
                return None  # no file, no photos: reopening is the camera workers' to try
            with self._guarded():
                conn = self._live(reopen=False)
                rows = conn.execute("SELECT seq, event_id, camera FROM photos ORDER BY seq").fetchall()  # no blobs
                seq = next((seq for seq, eid, cam in rows if (eid, cam) not in skip), None)
                if seq is None:
                    return None
                e, c, j, t, p, n = conn.execute(
                    "SELECT event_id, camera, jpeg, taken_ms, part, parts FROM photos WHERE seq = ?", (seq,)
                ).fetchone()
            self._hand(str(e), str(c), int(seq))
        finally:
            self._lock.release()
        return Photo(e, c, bytes(j), t / 1000.0, p, n)

    def _hand(self, event_id: str, camera: str, seq: int) -> None:
        """Remember which copy of (event_id, camera) the sender has, so its PUBACK deletes that copy only."""
        self._handed.pop((event_id, camera), None)
        self._handed[event_id, camera] = (self.file_id, seq)
        while len(self._handed) > _HANDED_MEMORY:  # one in flight; more only for copies dropped for room
            del self._handed[next(iter(self._handed))]

    def ack(self, event_id: str, camera: str | None = None) -> int:
        """Delete the photo(s) of ``event_id`` (only ``camera``'s when given) after the broker's PUBACK.

        With ``camera``, only the copy :meth:`oldest` last gave for it, if it gave one: a
        retried capture stored since is a copy of its own, sent and deleted on its own PUBACK.
        """
        with self._lock, self._guarded():
            return self._delete(self._live(), event_id, camera)

    def try_ack(self, event_id: str, camera: str) -> bool:
        """:meth:`ack` unless a commit holds the store (then False, nothing done); never waits.

        Raises:
            OutboxError: the store is closed or unavailable.
            sqlite3.Error: the disk refused the delete (a full disk, another process writing the file).

        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            with self._guarded():
                conn = self._live(reopen=False)
                conn.execute("PRAGMA busy_timeout = 0")  # another process writing the file: try again later
                try:
                    self._delete(conn, event_id, camera)
                finally:
                    conn.execute("PRAGMA busy_timeout = 10000")
        finally:
            self._lock.release()
        return True

    def _delete(self, conn: sqlite3.Connection, event_id: str, camera: str | None) -> int:
        if camera is None:
            cur = conn.execute("DELETE FROM photos WHERE event_id = ?", (event_id,))
            for key in [k for k in self._handed if k[0] == event_id]:
                del self._handed[key]
        elif (handed := self._handed.get((event_id, camera))) is not None:
            if handed[0] != self.file_id:
                del self._handed[event_id, camera]
                log.info(
                    "photo %s/%s was delivered from a photos.db since moved aside; nothing to delete in the new one",
                    printable(event_id),
                    printable(camera),
                )
                return 0
            cur = conn.execute("DELETE FROM photos WHERE seq = ?", (handed[1],))
            del self._handed[event_id, camera]
        else:  # never handed out in this run (acked before it was sent, or after a restart)
            cur = conn.execute("DELETE FROM photos WHERE event_id = ? AND camera = ?", (event_id, camera))
        gone = int(cur.rowcount)
        if gone:
            row = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM photos").fetchone()
            self._counts = (int(row[0]), int(row[1]), self._counts[2])
        return gone

    def stats(self) -> PhotoStats:
        """The counters, without waiting for the store (the heartbeat must not wait on a commit)."""
        pending, stored, dropped = self._counts
        return PhotoStats(pending, stored, self.cap_bytes, dropped)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._conn is not None:
                close_checkpointed(self._conn)

    def _repr_state(self) -> str:
        pending, stored, dropped = self._counts
        state = f"pending={pending} bytes={stored}/{self.cap_bytes} dropped={dropped}"
        return state if self.error is None else f"{state} unavailable"
