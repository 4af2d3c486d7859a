"""The outbox's side of its intake: which new alarms go there, under which seqs, and how they move into SQLite.

Mixed into :class:`agent.outbox.Outbox` (one object, one set of locks and
counters): the intake file's format is agent/outbox_intake.py, the rules are
the outbox's (its module docstring).  A new alarm is made durable here with
one block and one ``fdatasync``; such a row is pending like any other
(``_live``, in seq order); it moves into SQLite with the next commit there,
or at stop, and is never moved at all when its PUBACK comes first.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import OutboxError, OutboxFullError
from agent.events import Event
from agent.outbox_db import IntakeRecovery, is_full, raise_seq, set_intake_in_use
from agent.outbox_intake import MAX_PAYLOAD, SLOTS, Found, Intake, payload_of
from agent.outbox_recovery import aside_path
from agent.outbox_rows import OutboxRow, Row, as_row
from agent.statefile import sync_dir

log = logging.getLogger(__name__)

# How long take_in_now waits for the outbox's lock: a read or a healthy commit ends well within it; a commit
# stuck in SQLite's busy timeout does not, and the press is then held in memory instead of waiting.
TAKE_IN_WAIT_S = 0.05
# An intake row moving in: after a crash it may already be here (moved, but not yet marked done there).
_MOVE_IN = "INSERT OR IGNORE INTO outbox (seq, id, type, alarm, created_ms, body) VALUES (?, ?, ?, ?, ?, ?)"


def open_intake(path: Path) -> tuple[tuple[Intake, Found] | None, IntakeRecovery | None]:
    """The intake and what it holds, or None (logged) when it cannot be used: SQLite then takes every event.

    Second: what of it could not be read, for ``agent_started`` (else None).
    A bad sector costs only its block (:meth:`Intake.read`).  A file none of
    whose blocks can be read is moved aside and a new one started: the agent
    must start, or every later press is lost to save the few in it.
    """
    try:
        opened = _read_intake(path)
    except OSError as exc:
        aside = _move_unreadable(path, exc)
        lost = IntakeRecovery(aside, SLOTS)
        if aside is None:
            return None, lost
        try:
            return _read_intake(path), lost
        except OSError as again:
            log.warning(
                "outbox intake %s: the new file cannot be read either (%s); every event is committed to SQLite "
                "instead; check the disk",
                path,
                again,
            )
            return None, lost
    if opened is None or not opened[1].unreadable:
        return opened, None
    log.critical(
        "outbox intake %s: %d of its blocks cannot be read; alarms waiting in them are not sent while they "
        "stay unreadable, the others are; seq resumes above the last one saved; check the disk",
        path,
        opened[1].unreadable,
    )
    return opened, IntakeRecovery(None, opened[1].unreadable)


def _read_intake(path: Path) -> tuple[Intake, Found] | None:
    """Open and read ``path``; None (logged) when it cannot be opened.

    Raises:
        OSError: no block of it can be read.

    """
    try:
        intake = Intake(path)
    except OSError as exc:
        log.warning("outbox intake %s cannot be used (%s); every event is committed to SQLite instead", path, exc)
        return None
    try:
        found = intake.read()
    except OSError:
        intake.close()
        raise
    if found.damaged:
        log.warning(
            "outbox intake %s: %d blocks were cut short by a power cut or crash, or damaged on disk since; "
            "their events are skipped, and the file's highest seq is not trusted (seq resumes above the saved mark)",
            path,
            found.damaged,
        )
    return intake, found


def _move_unreadable(path: Path, exc: OSError) -> Path | None:
    """Rename an intake that cannot be read to ``<name>.corrupt-<UTC time>``; where it went (logged both ways)."""
    aside = aside_path(path, "corrupt")
    try:
        path.rename(aside)
        sync_dir(path.parent)
    except OSError as err:
        log.critical(
            "outbox intake %s cannot be read (%s) nor moved aside (%s); its waiting alarms are lost; every event "
            "is committed to SQLite; check the disk",
            path,
            exc,
            err,
        )
        return None
    log.critical(
        "outbox intake %s cannot be read (%s); moved aside to %s, a new one started; its waiting alarms "
        "are not sent and seq resumes above the last one saved; check the disk",
        path,
        exc,
        aside,
    )
    return aside


class TakeIn:
    """The intake half of :class:`~agent.outbox.Outbox`; every method runs under the outbox's lock unless it says."""

    if TYPE_CHECKING:  # the outbox's own state and steps, which these methods share
        path: Path
        _site: str
        _device: str
        _wall: Callable[[], float]
        _lock: threading.Lock
        _seq_lock: threading.Lock
        _conn: sqlite3.Connection
        _top: int
        _reserved_top: int
        _in_commit: range
        _pending: int
        _live: dict[int, OutboxRow]
        _intake: Intake | None
        _take_new: bool
        _retire: bool

        def _check_open(self) -> None: ...
        def _insert(self, rows: list[Row], *, all_alarms: bool) -> list[int]: ...
        def _txn(self) -> contextlib.AbstractContextManager[None]: ...

    def _adopt(self, intake: Intake, found: Found) -> None:
        """Take over what a stop left in the intake: its pending events and its highest seq."""
        path = intake.path
        seqs = [row.seq for row in found.live]
        there = {
            int(r[0])
            for i in range(0, len(seqs), 500)
            for r in self._conn.execute(
                f"SELECT seq FROM outbox WHERE seq IN ({','.join('?' * len(seqs[i : i + 500]))})",  # noqa: S608
                seqs[i : i + 500],
            )
        }
        intake.done(there)  # moved into SQLite before the stop, not yet marked done
        self._live = {row.seq: row for row in found.live if row.seq not in there}
        if self._live:
            log.warning(
                "outbox intake %s: %d events recorded before the last stop were not yet acknowledged; sending them",
                path,
                len(self._live),
            )
        if found.top > self._top:
            self._top = found.top
            self._reserved_top = found.top  # the next SQLite commit raises the file's counter to it
        self._intake = intake

    def _settle_intake(self, intake: Intake) -> None:
        """After SQLite counted the intake's losses (``open_or_recover``): make sure the next start does not again."""
        try:
            intake.settle()
        except OSError as exc:
            log.warning(
                "outbox intake %s: cannot clear its damaged blocks (%s); the next start counts them again",
                intake.path,
                exc,
            )

    def _drop_intake(self, exc: OSError) -> None:
        """No new events go to the intake; the file stays open for its events' done marks until the stop.

        Closed at once, the blocks of events acknowledged or moved into SQLite
        afterwards would stay marked live, and every later start would send
        those events again.
        """
        assert self._intake is not None
        log.error(
            "outbox intake %s failed (%s); from now on every event is committed to SQLite; "
            "the events it holds move there with the next commit",
            self._intake.path,
            exc,
        )
        self._take_new = False

    def _move_in(self, rows: list[OutboxRow]) -> None:
        """Insert intake rows into SQLite; inside the caller's transaction."""
        for r in rows:
            self._conn.execute(_MOVE_IN, as_row(r))

    def _let_go(self, seqs: list[int]) -> None:
        """These intake rows are acknowledged or in SQLite now: forget them and mark their blocks done."""
        if not seqs:
            return
        for seq in seqs:
            del self._live[seq]
        if self._intake is not None:
            self._intake.done(seqs)

    def _take_in(self, events: list[Event]) -> list[OutboxRow] | None:
        """Make ``events`` durable in the intake and return their rows; None when they do not go there.

        Only a batch of alarms goes there, and only when every one fits a
        free block.  If the intake fails under them, they are committed to
        SQLite with the seqs they were given; if that fails too, those seqs
        stay unused (a gap, as for an evicted event) and the caller holds the
        events in memory under new ones.

        Raises:
            OutboxError, OutboxFullError: the intake failed and so did the SQLite commit that replaced it.

        """
        return self._into_intake(events, wait=True)

    def take_in_now(
        self,
        events: list[Event],
        seqs: list[int] | None = None,
        *,
        wait_s: float = TAKE_IN_WAIT_S,
        created: float | None = None,
    ) -> list[OutboxRow] | None:
        """Make a batch of alarms durable in the intake without a long wait and without SQLite; else None.

        For the recorder while events are held in memory (SQLite is failing):
        another thread may be inside a commit, holding the outbox's lock for up
        to the busy timeout, so the lock is waited for ``wait_s`` at most.
        ``seqs``: the ones :meth:`reserve_seq` gave these events (else new
        ones); ``created``: when they were recorded (held in memory since;
        else now).  None also where :meth:`_take_in` says None, and when the intake
        write fails: then nothing of the batch is on disk (the intake is
        dropped), the seqs stay unused or the caller's (a block may still hold
        them after a crash, so they are never handed out again) and the caller
        holds the events.

        Raises:
            OutboxError: the outbox is closed.

        """
        return self._into_intake(events, wait=False, seqs=seqs, wait_s=wait_s, created=created)

    def _takes(self, events: list[Event]) -> bool:
        """Whether the intake takes this batch: while it takes new events, has the blocks, and for alarms only.

        A non-alarm waiting there could be neither evicted nor kept out of the alarms' reserve.
        """
        intake = self._intake
        return (
            intake is not None
            and self._take_new
            and intake.free >= len(events)
            and all(e.type.is_alarm for e in events)
        )

    def _into_intake(
        self,
        events: list[Event],
        *,
        wait: bool,
        seqs: list[int] | None = None,
        wait_s: float = 0.0,
        created: float | None = None,
    ) -> list[OutboxRow] | None:
        """:meth:`_take_in` (``wait``) and :meth:`take_in_now` (not: a bounded wait for the lock, no SQLite)."""
        if not self._takes(events):
            return None
        bodies = [e.body(self._site, self._device) for e in events]
        payloads = [payload_of(e.id, e.type.value, b) for e, b in zip(events, bodies, strict=True)]
        if any(len(p) > MAX_PAYLOAD for p in payloads):
            return None
        created_ms = int((self._wall() if created is None else created) * 1000)
        if not self._lock.acquire(timeout=-1 if wait else wait_s):
            return None
        try:
            self._check_open()
            intake = self._intake
            if intake is None or not self._takes(events):
                return None
            if seqs is None:
                seqs = self._number_for_intake(len(events))
            rows = [
                OutboxRow(seq, e.id, e.type.value, e.type.is_alarm, created_ms / 1000.0, b)
                for seq, e, b in zip(seqs, events, bodies, strict=True)
            ]
            try:
                intake.write(rows, payloads)
            except OSError as exc:
                self._drop_intake(exc)
                return self._after_failed_write(intake, rows) if wait else None
            finally:
                with self._seq_lock:
                    self._in_commit = range(0)
            self._add_live(rows)
        finally:
            self._lock.release()
        return rows

    def _number_for_intake(self, n: int) -> list[int]:
        with self._seq_lock:
            first = self._top + 1
            self._top += n
            self._reserved_top = self._top
            self._in_commit = range(first, self._top + 1)  # not in the mark until the block is synced
        return list(range(first, first + n))

    def _add_live(self, rows: list[OutboxRow]) -> None:
        """Intake rows now on disk: pending, in seq order (a reserved seq may be below ones already there)."""
        below = bool(self._live) and min(r.seq for r in rows) < next(reversed(self._live))
        for row in rows:
            self._live[row.seq] = row
        if below:
            self._live = dict(sorted(self._live.items()))
        self._pending += len(rows)

    def _after_failed_write(self, intake: Intake, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Commit rows the intake failed to sync, then blank their blocks (hold the lock).

        Only once they are in SQLite: if the commit fails too, the caller holds
        the events in memory and the unsynced blocks may be their only copy on
        disk (a crash then brings them back, under these seqs).
        """
        committed = self._commit_as_given(rows)
        intake.void_failed()
        return committed

    def _commit_as_given(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Commit rows whose seqs are already given (the intake failed under them); hold the lock."""
        try:
            self._insert([as_row(r) for r in rows], all_alarms=all(r.alarm for r in rows))
        except sqlite3.Error as exc:
            err = OutboxFullError if is_full(exc) else OutboxError
            raise err(f"outbox {self.path}: cannot record {len(rows)} events: {exc}") from exc
        return rows

    def _close_intake(self) -> None:
        """At stop: move the intake's pending events into SQLite and raise its counter to the top seq."""
        intake = self._intake
        if intake is None:
            return
        moving = list(self._live.values())
        try:
            with self._txn():
                self._move_in(moving)
                raise_seq(self._conn, self._top)
                if self._retire:
                    set_intake_in_use(self._conn, used=False)
            self._let_go([r.seq for r in moving])
            intake.sync()
        except (sqlite3.Error, OSError) as exc:
            if self._live:
                log.warning(
                    "outbox %s: at stop, %d events stay in the intake %s (%s); they are sent after the next start",
                    self.path,
                    len(self._live),
                    intake.path,
                    exc,
                )
            else:
                log.warning(
                    "outbox %s: at stop, the intake %s could not be synced (%s); events it held that were "
                    "acknowledged may be sent once more after the next start",
                    self.path,
                    intake.path,
                    exc,
                )
        else:
            # Switched off: its events and top seq are in SQLite now; but a block the disk would not read may
            # still hold an alarm a later start can read.
            if self._retire and not intake.unreadable:
                with contextlib.suppress(OSError):
                    intake.path.unlink()
                    sync_dir(intake.path.parent)
        finally:
            intake.close()
