"""The outbox's acknowledgement side: deletes of delivered rows and the WAL checkpoints, on a connection of their own.

Kept apart from :mod:`agent.outbox` (what is stored and when) because it has
its own durability and its own timing:

* Deletes are not fsynced (``synchronous=NORMAL``, set once on this
  connection: switching the pragma per ack cost a tenth of the sender's time
  in a drain).  Losing one to a power cut only means the event is sent again;
  the contract allows duplicates, never loss.
* The WAL is checkpointed here, before a delete, on the sender's thread after
  a PUBACK, never inside a press's COMMIT: a checkpoint there cost that press
  two more fsyncs one time in 25, and the restarted WAL's header one more.
  The delete that follows restarts the WAL, so the next press appends to it
  without syncing a new header.  The puts' connection keeps a higher
  threshold of its own (:data:`PUT_CHECKPOINT_PAGES`) as the backstop while
  nothing is acknowledged (offline).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

from agent.closing import ClosingFile
from agent.errors import OutboxError
from agent.outbox_db import connect

log = logging.getLogger(__name__)

PUT_CHECKPOINT_PAGES = 300  # the puts' backstop: 1.2 MB of WAL at 4 KiB pages, well inside the disk headroom
ACK_CHECKPOINT_COMMITS = 25  # commits between the acks' checkpoints: about 100 WAL pages (a commit writes about 4)
_CHUNK = 500  # seqs per DELETE statement (SQLite's bound on variables is 999 in old builds)


class Acks(ClosingFile):
    """The connection that deletes acknowledged rows and checkpoints the WAL.

    :attr:`lock` guards the connection and is taken before the outbox's own
    lock, never inside it; the checkpoint runs under both, as the deletes do
    (a put that comes meanwhile waits for it, as it waited for an ack's
    autocheckpoint before; what changed is that no press's COMMIT carries one).
    :attr:`commits` counts commits since the last checkpoint, both sides' (an
    int written under either lock: an estimate is enough).
    """

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.commits = 0
        self._conn = connect(path, busy_timeout_s)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA cache_size=-64")  # deletes by key touch few pages
        self._conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoint_if_due() does it, at its own time
        self._closed = False

    def checkpoint_if_due(self) -> None:
        """Copy the WAL into the database once it has grown (passive); hold :attr:`lock` and the outbox's lock."""
        if self.commits < ACK_CHECKPOINT_COMMITS or self._closed:
            return
        self.commits = 0
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("outbox %s: checkpoint failed (%s); the next one tries again", self.path, exc)

    def delete(self, keys: list[int]) -> int:
        """Delete ``keys`` in one transaction; return how many were there.  Hold :attr:`lock` and the outbox's lock.

        Raises:
            OutboxError: the database refused (locked past the busy timeout, I/O).

        """
        removed = 0
        self.commits += 1
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                cur = self._conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)  # noqa: S608
                removed += max(0, cur.rowcount)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise OutboxError(f"outbox {self.path}: cannot delete acknowledged events: {exc}") from exc
        return removed

    def close(self) -> None:
        """Close the connection; idempotent.  Hold :attr:`lock`."""
        if not self._closed:
            self._closed = True
            self._conn.close()

    def _repr_state(self) -> str:
        return f"commits={self.commits}"
