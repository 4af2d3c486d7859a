"""The outbox's seq counter: numbers handed out in memory, under a lock of their own.

Mixed into :class:`agent.outbox.Outbox` (one object, one set of counters).
Kept apart because its rule is its own: ``seq`` never goes back and is never
given twice.  The counter (``_top``) lives in memory behind ``_seq_lock``, not
in SQLite's AUTOINCREMENT, so :meth:`Seqs.reserve_seq` and
:meth:`Seqs.top_seq` never wait behind a commit stuck on the outbox's lock,
and a commit cannot pick a seq just reserved for an event held in memory.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.outbox_rows import Row


class Seqs:
    """The seq-counter part of :class:`~agent.outbox.Outbox`; each method takes only the seq lock."""

    if TYPE_CHECKING:  # the outbox's own state, which these methods share
        _seq_lock: threading.Lock
        _top: int
        _reserved_top: int
        _in_commit: range

    def _numbered(self, rows: list[Row]) -> tuple[list[Row], range]:
        """Give each row without a seq the next one, under the seq lock (not SQLite's AUTOINCREMENT).

        ``reserve_seq`` takes only the seq lock, so it may run while a commit
        is inside its transaction; a seq SQLite picked there could be the one
        just reserved for a held event.
        """
        n = sum(1 for row in rows if row[0] is None)
        if not n:
            return rows, range(0)
        with self._seq_lock:
            fresh = range(self._top + 1, self._top + 1 + n)
            self._top += n
            self._in_commit = fresh
        it = iter(fresh)
        return [row if row[0] is not None else (next(it), *row[1:]) for row in rows], fresh

    def _give_back(self, fresh: range) -> None:
        """A commit failed: its seqs are free again unless one was given out after them (then a gap)."""
        with self._seq_lock:
            if fresh and self._top == fresh[-1]:
                self._top = fresh[0] - 1
            self._in_commit = range(0)

    def reserve_seq(self) -> int:
        """A seq for an event held in memory: sendable now, stored later with ``put(seq=)``.

        Memory only (the outbox may be unusable); every later insert keeps
        SQLite's counter above it, and the caller saves it as the high-water mark.
        """
        with self._seq_lock:
            self._top += 1
            self._reserved_top = self._top
            return self._top

    def top_seq(self) -> int:
        """The highest seq used or reserved; memory only, so it never waits behind a stuck commit.

        Seqs a SQLite commit has taken are left out until it returns (it may
        give them back): saved as the state file's mark and then lost with a
        crash, they would make the same file look replaced at the next start.
        """
        with self._seq_lock:
            f = self._in_commit
            return f[0] - 1 if f and self._top == f[-1] else self._top
