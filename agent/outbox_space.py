"""The outbox's disk budget: its cap, the alarms' reserve, and what is lost when nothing fits.

Mixed into :class:`agent.outbox.Outbox` (one object, one connection, one set of
locks and counters); kept apart from what is stored and when, because it has a
rule set of its own (the outbox's module docstring, "Disk is bounded"):

* ``max_page_count`` follows the filesystem's free space minus a headroom for
  the WAL, re-read at most every :data:`_LIMITS_TTL_S`, so a WAL database never
  meets a 100 % full disk it could not even delete on;
* non-alarm events may use only :data:`NON_ALARM_SHARE` of the cap; past it the
  oldest non-alarm rows are evicted, :data:`EVICT_CHUNK` at a time, never a
  ``panic`` or ``tamper`` row;
* every event lost (evicted here, or dropped from the recorder's memory) is
  counted in ``dropped``, which is kept in the file's ``meta`` table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.ballast import BALLAST_BYTES

# The outbox's own logger: these lines read as they did before the split.
log = logging.getLogger("agent.outbox")

NON_ALARM_SHARE = 0.8
EVICT_CHUNK = 64
_LIMITS_TTL_S = 1.0


def free_bytes(folder: Path) -> int:
    """Free space in ``folder``'s filesystem; the agent's reserve when it cannot be told (then it stays)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return BALLAST_BYTES  # cannot tell: leave the reserve alone


class Space:
    """The disk-budget half of :class:`~agent.outbox.Outbox`; every method runs under its lock unless it says."""

    if TYPE_CHECKING:  # the outbox's own state and steps, which these methods share
        path: Path
        _mono: Callable[[], float]
        _headroom: int
        _seq_lock: threading.Lock
        _conn: sqlite3.Connection
        _limits_at: float
        _disk_low: bool
        _dropped: int
        _dropped_dirty: bool
        _pending: int
        _page_size: int
        _cap_pages: int
        _allowed_pages: int

        def _txn(self) -> contextlib.AbstractContextManager[None]: ...

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _page_counts(self) -> tuple[int, int]:
        pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        return pages, free

    def _refresh_limits(self, *, force: bool = False) -> None:
        now = self._mono()
        if not force and now - self._limits_at < _LIMITS_TTL_S:
            return
        self._limits_at = now
        pages, _ = self._page_counts()
        try:
            st = os.statvfs(self.path.parent)
            fs_free = st.f_bavail * st.f_frsize
        except OSError:
            fs_free = self._cap_pages * self._page_size
        room = max(0, (fs_free - self._headroom) // self._page_size)
        allowed = max(pages, min(self._cap_pages, pages + room))
        was_low = self._disk_low
        self._disk_low = allowed < self._cap_pages
        if self._disk_low and not was_low:
            log.error(
                "outbox filesystem %s is nearly full (%.1f MB free); outbox capped at its current %.1f MB "
                "instead of %.1f MB; alarms are still recorded, other events are evicted first; free disk space",
                self.path.parent,
                fs_free / 1e6,
                allowed * self._page_size / 1e6,
                self._cap_pages * self._page_size / 1e6,
            )
        elif was_low and not self._disk_low:
            log.warning("outbox filesystem %s has room again; full cap restored", self.path.parent)
        if allowed != self._allowed_pages:
            self._conn.execute(f"PRAGMA max_page_count={int(allowed)}")
            self._allowed_pages = allowed

    def _evict(self, count: int) -> int:
        """Delete the oldest ``count`` non-alarm rows in a transaction of their own; return how many went.

        ``dropped``, ``pending`` and the log change only once COMMIT succeeded: on a
        disk full to the byte the COMMIT fails and the rows are still there.
        """
        with self._txn():
            cur = self._conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE alarm = 0 ORDER BY seq LIMIT ?)",
                (count,),
            )
            n = max(0, cur.rowcount)
            if n:
                self._save_dropped(self._dropped + n)
        if n:
            with self._seq_lock:  # note_dropped adds under it, from another thread
                self._dropped += n
            self._pending -= n
            log.warning("outbox full: evicted %d oldest non-alarm events (%d dropped so far)", n, self._dropped)
        return n

    def _make_room_for_non_alarm(self) -> None:
        pages, free = self._page_counts()
        limit = int(self._allowed_pages * NON_ALARM_SHARE)
        if pages - free >= limit:
            self._evict(EVICT_CHUNK)

    def _save_dropped(self, value: int | None = None) -> None:
        """Write ``dropped`` (``value``, else the count now) into the open transaction."""
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ('dropped', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (self._dropped if value is None else value,),
        )

    @property
    def dropped(self) -> int:
        """Events lost so far (evicted, or dropped from memory); a change tells the sender's hand-off to re-read."""
        return self._dropped

    def note_dropped(self, n: int) -> None:
        """Count ``n`` events lost outside the file (the memory fallback overflowed) in ``dropped``."""
        with self._seq_lock:
            self._dropped += n
            self._dropped_dirty = True  # persisted with the next commit
