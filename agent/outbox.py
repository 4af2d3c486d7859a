"""The durable outbox: every event is committed to SQLite before it is sent.

Rules it keeps (architecture.md):

* ``put`` returns only after COMMIT with ``synchronous=FULL`` in WAL mode, so a
  crash or power cut after ``put`` returned loses nothing.
* A row leaves only through ``ack`` (the uplink calls it on a successful PUBACK)
  or through eviction, which takes the oldest non-alarm rows first and never a
  ``panic`` or ``tamper`` row; evictions are counted in ``dropped``.  Acks and
  WAL checkpoints have a connection of their own (outbox_acks.py).
* Disk is bounded.  A WAL database on a 100 % full filesystem cannot even
  delete, so ``max_page_count`` is kept below the filesystem's free space minus
  a headroom for the WAL, and non-alarm events may use only
  ``NON_ALARM_SHARE`` of the cap: the rest is the documented reserve for alarms
  (outbox_space.py).
* A database that SQLite cannot read at start is moved aside, loudly, its
  readable rows are salvaged into a fresh file, and ``seq`` carries on above
  the highest one seen; restartably (outbox_db.py, outbox_recovery.py, outbox_opening.py).
* ``seq`` never goes back: a file whose counter is below the high-water mark
  kept outside it (``seq_mark``, agent-state.json) was deleted or replaced, and
  ``seq`` resumes above the mark; seqs :meth:`Outbox.reserve_seq` handed out
  for events held in memory are never reused (outbox_seqs.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from agent.ballast import BALLAST_BYTES, keep, release
from agent.closing import ClosingFile
from agent.errors import OutboxBusyError, OutboxError, OutboxFullError
from agent.events import Event
from agent.outbox_acks import PUT_CHECKPOINT_PAGES, Acks
from agent.outbox_db import (
    claim,
    close_checkpointed,
    count,
    intake_in_use,
    is_full,
    last_seq,
    open_or_recover,
    owner_in,
    raise_seq,
    set_intake_in_use,
)
from agent.outbox_intake import Found, Intake
from agent.outbox_lanes import select_batch, select_one
from agent.outbox_opening import log_recovery, set_aside_foreign
from agent.outbox_rows import OutboxRow, OutboxStats, Row, stored
from agent.outbox_seqs import Seqs
from agent.outbox_space import EVICT_CHUNK, Space, free_bytes
from agent.outbox_takein import TakeIn, open_intake

log = logging.getLogger(__name__)

HEADROOM_BYTES = 4 * 1024 * 1024
# Every row is inserted with its seq: the outbox's counter gives it (``_numbered``), or it was reserved.
_INSERT = "INSERT INTO outbox (seq, id, type, alarm, created_ms, body) VALUES (?, ?, ?, ?, ?, ?)"


class Outbox(Space, Seqs, TakeIn, ClosingFile):
    """SQLite outbox shared by the input threads (put) and the sender (batch/ack).

    One connection behind one lock: puts are short and the lock is never held
    across network I/O, so a slow broker never delays recording a press.

    A new alarm is first made durable in the intake (agent/outbox_intake.py)
    when it has room: one block and one ``fdatasync`` instead of a SQLite
    commit.  Such a row is pending like any other (:meth:`next_batch`,
    :meth:`get`, :meth:`ack`, :meth:`pending` see it); it moves into SQLite
    with the next commit there, or at :meth:`close`, and is never moved at
    all when its PUBACK comes first.  ``intake=False`` commits every event to
    SQLite.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        site: str,
        device: str,
        max_mb: float = 200.0,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        headroom_bytes: int = HEADROOM_BYTES,
        seq_mark: int = 0,
        busy_timeout_s: float = 10.0,
        intake: bool = True,
    ) -> None:
        self.path = Path(path)
        self._site = site
        self._device = device
        self._wall = wall
        self._mono = mono
        self._headroom = headroom_bytes
        self._lock = threading.Lock()
        self._seq_lock = threading.Lock()  # reserve_seq never waits behind a commit stuck on the outbox lock
        self._closed = False
        self._limits_at = -1e9
        self._disk_low = False
        self._dropped_dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if free_bytes(self.path.parent) < BALLAST_BYTES:  # SQLite could not even open: use the agent's reserve
            release(self.path)
        self._live: dict[int, OutboxRow] = {}  # seq -> row on disk in the intake only; in seq order
        self._intake: Intake | None = None
        intake_path = self.path.with_name(self.path.name + ".intake")
        self._who = f"{site}/{device}"
        # (where another device's outbox went, its site/device)
        self.foreign: tuple[Path, str] | None = set_aside_foreign(self.path, intake_path, self._who)
        was_there = intake_path.exists()
        # An intake left by a run with it on is read even when it is off now: its events and seqs are the outbox's.
        opened, intake_lost = open_intake(intake_path) if intake or was_there else (None, None)
        self._take_new = intake and opened is not None  # new alarms may go to the intake
        self._retire = not intake  # at a clean stop, once its events are in SQLite, the file goes
        try:
            self._conn, self.recovery = open_or_recover(
                self.path,
                busy_timeout_s,
                seq_mark,
                outside_top=opened[1].top if opened else 0,
                intake_new=opened is None or opened[0].grown or opened[1].lost_top,
            )
        except BaseException:
            if opened is not None:
                opened[0].close()
            raise
        try:
            self.recovery = dataclasses.replace(self.recovery, intake=intake_lost)
            self._settle_in(opened, max_mb, busy_timeout_s)
        except BaseException:
            if opened is not None:
                opened[0].close()
            with contextlib.suppress(Exception):
                self._acks.close()
            self._conn.close()
            raise
        keep(self.path, self._headroom)

    def _settle_in(self, opened: tuple[Intake, Found] | None, max_mb: float, busy_timeout_s: float) -> None:
        """The rest of opening, once SQLite is open: counters, limits, and what the intake holds."""
        log_recovery(self.path, self.recovery)
        self._top = last_seq(self._conn)  # highest seq used or reserved
        self._reserved_top = 0  # highest seq reserved for an event held in memory
        self._in_commit = range(0)  # seqs a SQLite commit has taken and not yet committed
        self._acks = Acks(self.path, busy_timeout_s)  # deletes and WAL checkpoints (outbox_acks.py)
        self._conn.execute(f"PRAGMA wal_autocheckpoint={PUT_CHECKPOINT_PAGES}")
        self._page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        self._cap_pages = max(16, int(max_mb * 1024 * 1024 // self._page_size))
        self._allowed_pages = -1  # forces the first _refresh_limits to set max_page_count
        if opened is not None:
            self._adopt(*opened)
            self._settle_intake(opened[0])
        in_use = intake_in_use(self._conn)
        # In use from before any seq it gives out, so its loss is noticed (outbox_db.py); no longer in use
        # once none is open (the one check that counted on it has run above).
        flip = in_use != self._take_new and (self._take_new or opened is None)
        if owner_in(self._conn) != self._who or flip:
            with self._txn():
                claim(self._conn, self._who)
                if flip:
                    set_intake_in_use(self._conn, used=self._take_new)
        self._pending = count(self._conn) + len(self._live)
        self.recovery = dataclasses.replace(self.recovery, pending=self._pending)
        self._dropped = self._meta("dropped")
        self._refresh_limits(force=True)

    def _insert(self, rows: list[Row], *, all_alarms: bool) -> list[int]:
        """One transaction for ``rows``; raw sqlite3 errors, the callers turn them into words."""
        self._refresh_limits()
        if not all_alarms:
            self._make_room_for_non_alarm()
        moving = list(self._live.values())
        rows, fresh = self._numbered(rows)
        try:
            with self._txn():
                self._move_in(moving)  # lower seqs than ``rows``: first
                if self._reserved_top:
                    raise_seq(self._conn, self._reserved_top)  # the counter stays above every seq given out
                if self._dropped_dirty:
                    self._save_dropped()
                for row in rows:
                    self._conn.execute(_INSERT, row)
        except BaseException:
            self._give_back(fresh)
            raise
        self._let_go([r.seq for r in moving])
        self._pending += len(rows)
        self._acks.commits += 1
        self._dropped_dirty = False
        seqs = [int(row[0] or 0) for row in rows]
        with self._seq_lock:
            self._top = max(self._top, *seqs)
            self._in_commit = range(0)
        return seqs

    def _row(self, event: Event, seq: int | None, created_ms: int) -> Row:
        return (
            seq,
            event.id,
            event.type.value,
            int(event.type.is_alarm),
            created_ms,
            event.body(self._site, self._device),
        )

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # a failed COMMIT (SQLITE_FULL, I/O) may leave it open
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise

    # ---- the public surface --------------------------------------------------

    def put(self, event: Event, *, seq: int | None = None, created: float | None = None) -> int:
        """Commit ``event`` durably and return its ``seq`` (see :meth:`put_row`)."""
        return self.put_row(event, seq=seq, created=created).seq

    def put_row(self, event: Event, *, seq: int | None = None, created: float | None = None) -> OutboxRow:
        """Commit ``event`` durably and return the stored row (``seq``: one :meth:`reserve_seq` gave it).

        ``created``: when it was recorded (an event held in memory since keeps
        its wait in the transmission time); else now.

        The row is what :meth:`next_batch` would read back, so the sender can
        publish it from memory (agent/sendwindow.py, the hand-off).

        Raises:
            OutboxFullError: no room even after evicting every non-alarm row.
            OutboxError: the database failed in another way (locked past the busy timeout, I/O).

        """
        if seq is None:  # a given seq (a held event's) is committed: the caller learns that SQLite works
            taken = self._take_in([event])
            if taken is not None:
                return taken[0]
        row = self._row(event, seq, int((self._wall() if created is None else created) * 1000))
        with self._lock:
            self._check_open()
            for _attempt in range(1000):
                try:
                    return stored(row, self._insert([row], all_alarms=event.type.is_alarm)[0])
                except sqlite3.Error as exc:
                    if not is_full(exc):
                        raise OutboxError(f"outbox {self.path}: cannot record {event.type.value} event: {exc}") from exc
                    before = self._allowed_pages
                    self._refresh_limits(force=True)
                    if self._allowed_pages > before:
                        continue  # the disk has room again: try at once, evict nothing
                    try:
                        evicted = self._evict(EVICT_CHUNK)
                    except sqlite3.Error as evict_exc:
                        raise self._full_error(
                            f"{self._pending} events; even evicting old ones failed: {evict_exc}",
                        ) from evict_exc
                    if not evicted:
                        break
            raise self._full_error(f"{self._pending} events, all alarms")

    def _full_error(self, what: str) -> OutboxFullError:
        return OutboxFullError(
            f"outbox {self.path} is full ({what}) and the disk has no room; "
            "the event is not recorded on disk; free disk space or raise outbox.max_mb",
        )

    def put_many(self, events: list[Event]) -> list[int]:
        """Commit ``events`` in one transaction (one fsync) and return their seqs (see :meth:`put_rows`)."""
        return [r.seq for r in self.put_rows(events)]

    def put_rows(self, events: list[Event]) -> list[OutboxRow]:
        """Commit ``events`` in one transaction (one fsync) and return the stored rows, in order.

        All or nothing: on a full disk nothing is written and
        :class:`OutboxFullError` is raised, so the caller can fall back to
        :meth:`put`, which evicts per event.  Any other database failure, the
        eviction's included, is an :class:`OutboxError`: nothing escapes raw.
        """
        if len(events) <= 1:
            return [self.put_row(e) for e in events]
        taken = self._take_in(events)
        if taken is not None:
            return taken
        created_ms = int(self._wall() * 1000)
        rows = [self._row(e, None, created_ms) for e in events]
        with self._lock:
            self._check_open()
            try:
                seqs = self._insert(rows, all_alarms=all(e.type.is_alarm for e in events))
            except sqlite3.Error as exc:
                if is_full(exc):
                    raise OutboxFullError(f"outbox {self.path} has no room for {len(events)} events at once") from exc
                raise OutboxError(f"outbox {self.path}: cannot record {len(events)} events: {exc}") from exc
        return [stored(row, seq) for row, seq in zip(rows, seqs, strict=True)]

    def next_batch(self, after_seq: int, limit: int, *, urgent: bool | None = None) -> list[OutboxRow]:
        """The oldest ``limit`` rows with ``seq > after_seq``, in ``seq`` order.

        ``urgent=True`` reads only real alarms, ``urgent=False`` only the other
        rows (test presses included), ``None`` every row (see ``outbox_lanes``).
        """
        with self._lock:
            self._check_open()
            rows = [OutboxRow.from_db(r) for r in select_batch(self._conn, after_seq, limit, urgent)]
            if self._live:
                live = [r for s, r in self._live.items() if s > after_seq and (urgent is None or r.urgent == urgent)]
                if live:
                    rows = sorted(rows + live[:limit], key=lambda r: r.seq)[:limit]
        return rows

    def get(self, seq: int) -> OutboxRow | None:
        """Row ``seq`` if it is still pending (neither acknowledged nor evicted)."""
        with self._lock:
            self._check_open()
            live = self._live.get(seq)
            if live is not None:
                return live
            r = select_one(self._conn, seq)
        return None if r is None else OutboxRow.from_db(r)

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows, not fsynced (agent/outbox_acks.py); return how many were still there."""
        keys = list(dict.fromkeys(seqs))
        if not keys:
            return 0
        with self._acks.lock, self._lock:
            self._check_open()
            live = [k for k in keys if k in self._live]
            if live:  # done without SQLite seeing them
                self._let_go(live)
                self._pending -= len(live)
                if len(live) == len(keys):
                    return len(live)
                done = set(live)
                keys = [k for k in keys if k not in done]
            self._acks.checkpoint_if_due()  # on the sender's thread, after a PUBACK: not in a press's COMMIT
            removed = self._acks.delete(keys)
            self._pending -= removed
        return removed + len(live)

    def pending(self) -> int:
        return self._pending

    def stats(self, *, wait_s: float = -1) -> OutboxStats:
        """The figures status shows; ``wait_s``: how long to wait for a commit in progress (-1: as long as it takes).

        Raises:
            OutboxBusyError: a commit held the outbox past ``wait_s`` (one stuck in
                SQLite's busy timeout holds it for seconds; status must not wait).

        """
        if not self._lock.acquire(timeout=wait_s):
            raise OutboxBusyError(f"a commit has held it over {wait_s:g} s (slow disk, or the database locked)")
        try:
            self._check_open()
            self._refresh_limits()  # a disk that fills while nothing happens shows up in the next status
            row = self._conn.execute("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1").fetchone()
            created = [row[0] / 1000.0] if row is not None else []
            if self._live:  # in seq order, but a held event's reserved seq may have been written last
                created.append(min(r.created for r in self._live.values()))
            pages, _ = self._page_counts()
            return OutboxStats(
                pending=self._pending,
                oldest_age_s=None if not created else max(0.0, round(self._wall() - min(created), 3)),
                dropped=self._dropped,
                db_bytes=pages * self._page_size,
                cap_bytes=self._cap_pages * self._page_size,
                disk_low=self._disk_low,
                last_seq=max(self._top, last_seq(self._conn)),
            )
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self.path} is closed")

    def close(self) -> None:
        with self._acks.lock, self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_intake()
            self._acks.close()
            close_checkpointed(self._conn)

    def _repr_state(self) -> str:
        return f"pending={self._pending} dropped={self._dropped}"


__all__ = ["HEADROOM_BYTES", "Outbox", "OutboxRow", "OutboxStats"]
