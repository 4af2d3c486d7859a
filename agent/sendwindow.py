"""The send window: which outbox rows are in flight, which wait for a retry, when the next may go.

All pending-ack bookkeeping (paho message id → outbox row) lives here and is
reset in one place per connection, so an ack from an old connection can never
delete a row sent on a new one.  Pacing is a token bucket one window deep:
bursts up to ``max_inflight``, then ``rate_per_s``, so a long backlog drains
at a rate central subscribers and the broker's queues keep up with.

Two lanes (architecture.md, "Alarms first"): real alarms (panic and tamper
that are not test presses) are taken before every other row, each lane in
``seq`` order with a cursor of its own, so a press made behind a backlog is
the next row published.  Routine rows leave one slot of the window free and
an alarm may borrow the next pacing token, so it goes at once: it waits
neither for a routine row's PUBACK nor for the pace.
A row refused by the broker (an MQTT 5 PUBACK reason >= 0x80) stays in the
outbox and is retried with backoff while later rows keep flowing; a refused
alarm is retried on a short schedule (1 s doubling to 15 s) and still ahead of
routine rows, a refused routine row (5 s doubling to 10 min) after every
alarm, so neither lane can hold up the other.

The hand-off: rows just committed are handed in (:meth:`SendWindow.hand`)
and :meth:`SendWindow.take` publishes them from memory instead of reading
SQLite, but only while they are the whole backlog: every pending outbox row
is either in flight or handed, and no refused row waits for a retry.  Then
each lane's next rows in ``seq`` order are exactly the handed rows of that
lane, so the choice (alarms first, pacing, the window) is the one a read
would make.  Anything else (a backlog from before the connection, a retry,
rows committed without a hand-off, a hand-off still on its way from another
thread) reads the outbox as before: the outbox stays the truth.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

from agent.outbox import Outbox, OutboxRow

log = logging.getLogger(__name__)

_DONE_KEPT = 256  # real alarms delivered on a connection kept in mind (their delete may lag the PUBACK)
_LOOK_BELOW_EVERY_S = 2.0  # the alarm lane's backstop read behind its cursor, at most this often

REFUSED_RETRY_MIN_S = 5.0
REFUSED_RETRY_MAX_S = 600.0
# An alarm is worth a retry every few seconds: the broker may refuse for a moment (quota, overload),
# and once an ACL is fixed the alarm should follow within seconds, not ten minutes.
REFUSED_ALARM_RETRY_MIN_S = 1.0
REFUSED_ALARM_RETRY_MAX_S = 15.0


def say_refused(row: OutboxRow, refusal: str | None, retry_in: float, root: str, *, kept: str) -> None:
    """Log a refused publish: CRITICAL for a real alarm, the worst thing the link can report."""
    log.log(
        logging.CRITICAL if row.urgent else logging.ERROR,
        "broker refused %s event seq %d (%s); kept %s, retrying in %.0f s; check the broker's ACL for %s/event/#",
        row.type,
        row.seq,
        refusal,
        kept,
        retry_in,
        root,
    )


def refused_delay(refusals: int, *, urgent: bool) -> float:
    """Seconds until a row refused ``refusals`` times before (0 for the first) is sent again."""
    low, high = (
        (REFUSED_ALARM_RETRY_MIN_S, REFUSED_ALARM_RETRY_MAX_S) if urgent else (REFUSED_RETRY_MIN_S, REFUSED_RETRY_MAX_S)
    )
    return min(high, low * float(2 ** min(refusals, 16)))


@dataclass
class _Lane:
    """One lane's reading position and its refused rows (seq → when due again)."""

    urgent: bool
    cursor: int = 0
    retry_at: dict[int, float] = field(default_factory=dict)
    read_short: bool = False  # this take read the outbox and found fewer rows than it asked for


class SendWindow:
    """Decides what the sender publishes next; pure bookkeeping, no network.

    Args:
        outbox: where the rows come from (read only; acks are the sender's job).
        max_inflight: rows published but not yet acknowledged, at most.
        rate_per_s: long-run publish rate during a drain.

    """

    def __init__(self, outbox: Outbox, *, max_inflight: int, rate_per_s: float) -> None:
        self.outbox = outbox
        self.max_inflight = max_inflight
        self.rate = rate_per_s
        self._inflight: dict[int, OutboxRow] = {}
        self._sent_at: dict[int, float] = {}  # mid -> the ``now`` of the take that sent it
        self._now = 0.0  # the last take's ``now``: sent() follows it
        self._alarms = _Lane(urgent=True)
        self._routine = _Lane(urgent=False)
        self._refusals: dict[int, int] = {}
        self._next_send = 0.0
        self._paced = False
        self._handed: deque[OutboxRow] = deque()  # appended by committing threads (deque appends are atomic)
        self._fresh: list[OutboxRow] = []  # handed rows not yet sent, in seq order
        self._memory: list[OutboxRow] | None = None  # this take's rows from memory, or None: read the outbox
        self._stale_upto = 0  # hand-offs of rows up to this seq are ignored (committed before a reset)
        self._dropped_seen = outbox.dropped
        self._suspect: set[int] = set()  # mids in flight when rows were evicted: maybe no longer pending
        self.refused_alarms = 0  # refusals of real alarms since start: each one is also logged as CRITICAL
        self.beside_seqs: frozenset[int] = frozenset()  # events in flight beside the window (held ones, sidelane.py)
        self._read = 0  # rows this take read past the lanes' cursors
        self._alarms_done: set[int] = set()  # real alarms delivered on this connection, maybe not yet deleted
        self._look_below_at = 0.0  # the alarm lane looks behind its cursor again from then (monotonic s)

    def reset(self) -> None:
        """A new connection: nothing is in flight, everything is sent again (real alarms first)."""
        self._inflight.clear()
        self._sent_at.clear()
        self._alarms = _Lane(urgent=True)
        self._routine = _Lane(urgent=False)
        self._refusals.clear()
        self._suspect.clear()
        self._alarms_done.clear()
        self._forget_handed()  # the new connection reads everything from the outbox first

    def hand(self, rows: list[OutboxRow]) -> None:
        """Rows just committed (any thread): :meth:`take` may publish them without reading them back."""
        self._handed.extend(rows)

    def handed_waiting(self) -> bool:
        """Whether a handed row is still unsent, or one stored late is due (the sender must look at it)."""
        if self._handed or any(r.seq > self._lane(r).cursor for r in self._fresh):
            return True
        return any(t <= self._now for lane in (self._alarms, self._routine) for t in lane.retry_at.values())

    def __len__(self) -> int:
        return len(self._inflight)

    def take(self, now: float, *, memory_only: bool = False) -> list[OutboxRow]:
        """The rows that may be published now: real alarms first, then the rest; each in ``seq`` order.

        ``memory_only``: only when the handed rows are the whole backlog, else nothing (the committing
        thread publishes a fresh row at once, a backlog is the sender's work).
        """
        self._paced = False
        self._now = now
        self._read = 0
        self._alarms.read_short = self._routine.read_short = False
        room = self.max_inflight - len(self._inflight) - self.beside
        if room <= 0:
            return []
        self._next_send = max(self._next_send, now - (self.max_inflight - 1) / self.rate)  # burst: one window
        if self._next_send > now:
            self._paced = True
            # A real alarm may borrow the next token: it goes now and the row after it waits one
            # interval longer.  Only one can be borrowed, so the long-run rate stays ``rate``.
            if self._next_send - now > 1.0 / self.rate:
                return []
            self._memory = self._backlog_in_memory()
            if memory_only and self._memory is None:
                return []
            return self._from_lane(self._alarms, now, 1)
        budget = min(room, int((now - self._next_send) * self.rate + 1e-6) + 1)  # 1e-6: float dust
        self._memory = self._backlog_in_memory()
        if memory_only and self._memory is None:
            return []
        rows = self._from_lane(self._alarms, now, budget)
        if self._alarms.read_short and len(rows) < budget and now >= self._look_below_at:
            self._look_below_at = now + _LOOK_BELOW_EVERY_S  # a backstop: a late row is handed over (hand())
            rows += self._look_below_alarm_cursor(now)[: budget - len(rows)]
        # The last free slot is kept for an alarm, so one recorded later never waits for a routine
        # row's PUBACK (a slow broker's round trip) before it can go.
        spare = 1 if self.max_inflight > 1 else 0
        rows += self._from_lane(self._routine, now, min(budget, room - spare) - len(rows))
        self._paced = len(rows) == budget < room
        if self._alarms.read_short and self._routine.read_short:
            self._look_below_cursors(now)
        return rows

    @property
    def beside(self) -> int:
        """Events in flight outside the window that share its slots."""
        return len(self.beside_seqs)

    def sent(self, mid: int, row: OutboxRow) -> None:
        """``row`` went out as paho message ``mid``."""
        lane = self._lane(row)
        lane.retry_at.pop(row.seq, None)
        self._next_send += 1.0 / self.rate
        self._inflight[mid] = row
        self._sent_at[mid] = self._now
        lane.cursor = max(lane.cursor, row.seq)

    def settle(self, mid: int, *, refused: bool, now: float) -> tuple[OutboxRow | None, float | None]:
        """A PUBACK for ``mid``: return (row, None) when delivered, (row, retry delay) when refused.

        ``(None, None)`` for a message id we did not send (a status or a reply).
        """
        row = self._inflight.pop(mid, None)
        self._sent_at.pop(mid, None)
        if row is None:
            return None, None
        if not refused:
            self._refusals.pop(row.seq, None)
            if row.urgent:
                self._alarms_done.add(row.seq)
                if len(self._alarms_done) > _DONE_KEPT:  # a long connection sending from memory never prunes it
                    self._alarms_done = set(sorted(self._alarms_done)[-_DONE_KEPT // 2 :])
            return row, None
        n = self._refusals.get(row.seq, 0)
        if row.urgent:
            self.refused_alarms += 1
        delay = refused_delay(n, urgent=row.urgent)
        self._refusals[row.seq] = n + 1
        self._lane(row).retry_at[row.seq] = now + delay
        return row, delay

    def sent_time(self, mid: int) -> float | None:
        """When the row in flight as ``mid`` went, or None."""
        return self._sent_at.get(mid)

    def oldest(self, now: float) -> tuple[float, OutboxRow] | None:
        """(seconds waited, row) of the row in flight longest without a PUBACK, or None."""
        if not self._sent_at:
            return None
        mid = min(self._sent_at, key=self._sent_at.__getitem__)
        return now - self._sent_at[mid], self._inflight[mid]

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long the sender may sleep before something could be due (news wakes it earlier)."""
        if len(self._inflight) + self.beside >= self.max_inflight:
            return idle_s
        if self._paced:
            return max(0.0, self._next_send - now)
        beside = self.beside_seqs  # the side lane sends those: no wake-up for them
        due = [t for lane in (self._alarms, self._routine) for seq, t in lane.retry_at.items() if seq not in beside]
        if due:
            return min(idle_s, max(0.01, min(due) - now))
        return idle_s

    def _lane(self, row: OutboxRow) -> _Lane:
        return self._alarms if row.urgent else self._routine

    def _from_lane(self, lane: _Lane, now: float, room: int) -> list[OutboxRow]:
        """Up to ``room`` rows of one lane: its due retries, then its next rows in ``seq`` order."""
        if room <= 0:
            return []
        rows = self._due_retries(lane, now, room)
        if len(rows) < room:
            if self._memory is None:
                ahead = self.outbox.next_batch(lane.cursor, room - len(rows), urgent=lane.urgent)
                lane.read_short = len(ahead) < room - len(rows)
                self._read += len(ahead)
                rows += ahead
            else:
                rows += [r for r in self._memory if r.urgent == lane.urgent][: room - len(rows)]
        return rows

    def _look_below_cursors(self, now: float) -> None:
        """Schedule pending rows at or below a lane's cursor that nothing is sending; they go at once.

        A held event is stored later under the seq it was given (agent/recorder.py,
        ``flush_held``), which may be below the cursor of a lane that has sent a
        later row meanwhile: no read past the cursor finds it, so without this
        it would wait for the next connection.  Only when both lanes have read
        everything past their cursors and the outbox still counts more rows than
        are known (in flight, waiting for a retry, just read, or held in flight
        beside the window) is the outbox read from the start: never for a press
        sent from memory, and no row in flight is sent twice.
        """
        retries = len(self._alarms.retry_at) + len(self._routine.retry_at)
        known = len(self._inflight) + retries + self._read + self.beside
        pending = self.outbox.pending()
        if pending <= known:
            return
        busy = {r.seq for r in self._inflight.values()} | self.beside_seqs
        for lane in (self._alarms, self._routine):
            if lane.cursor == 0:
                continue
            for row in self.outbox.next_batch(0, pending - self._read, urgent=lane.urgent):
                if row.seq > lane.cursor:
                    break
                self._schedule_late(lane, row, busy, now)

    def _look_below_alarm_cursor(self, now: float) -> list[OutboxRow]:
        """Real alarms stored late at or below the alarm lane's cursor (scheduled now); a read of a few rows.

        A backstop to the hand-off (:meth:`_stored_late`), run at most every
        :data:`_LOOK_BELOW_EVERY_S` when the alarm lane has read everything past
        its cursor, so a routine backlog never keeps such an alarm back (the
        full scan waits for both lanes).  The pending alarms at or below the cursor are the known
        ones (in flight, waiting for a retry, held beside, delivered but maybe
        not yet deleted) and any stored late,
        so the lane's first ``known + 1`` rows hold a late one if there is any.
        """
        lane = self._alarms
        if lane.cursor == 0:
            return []
        busy = {r.seq for r in self._inflight.values() if r.urgent} | self.beside_seqs | self._alarms_done
        late: list[OutboxRow] = []
        rows = self.outbox.next_batch(0, len(busy) + len(lane.retry_at) + 1, urgent=True)
        first = rows[0].seq if rows else math.inf  # delivered ones below the first pending alarm are gone
        self._alarms_done = {seq for seq in self._alarms_done if seq >= first}
        for row in rows:
            if row.seq > lane.cursor:
                break
            if self._schedule_late(lane, row, busy, now):
                late.append(row)
        return late

    def _stored_late(self, row: OutboxRow) -> None:
        """A handed row at or below its lane's cursor: stored after a later one went (a held event); due now.

        The recorder hands a held event over once it stores it under its old
        seq; without this it would wait for the scan, which runs only once
        both lanes have read everything (a routine backlog would keep a held
        alarm back).  A row this window or the side lane has in flight is left
        alone; one already acked is dropped by the retry's read.
        """
        self._schedule_late(
            self._lane(row), row, {r.seq for r in self._inflight.values()} | self.beside_seqs, self._now
        )

    @staticmethod
    def _schedule_late(lane: _Lane, row: OutboxRow, busy: set[int] | frozenset[int], now: float) -> bool:
        """Make a row stored behind its lane's cursor due ``now``, unless it is in flight or due already."""
        if row.seq in busy or row.seq in lane.retry_at:
            return False
        log.info("outbox: %s event seq %d was stored behind later ones; sending it now", row.type, row.seq)
        lane.retry_at[row.seq] = now
        return True

    def _forget_handed(self) -> None:
        """Drop every hand-off so far; one still on its way for a row committed before now is ignored too.

        Such a row may have been sent and deleted already; a read finds it if it is still pending.
        """
        self._stale_upto = self.outbox.top_seq()
        self._handed.clear()
        self._fresh = []

    def _backlog_in_memory(self) -> list[OutboxRow] | None:
        """The handed rows not yet sent, when they are every row a read would find; else None.

        Exact, not a guess: every pending row is in flight or handed (the
        counts match, and neither set holds a row that left the outbox
        without this window's ack), and no refused row waits for a retry.
        """
        pending = self.outbox.pending()
        dropped = self.outbox.dropped  # after pending: an eviction counts itself here first
        if dropped != self._dropped_seen:  # rows were evicted: handed or in-flight ones may be gone
            self._dropped_seen = dropped
            self._forget_handed()
            self._suspect = set(self._inflight)
            return None
        handed = self._handed
        if handed:
            while handed:
                row = handed.popleft()
                if row.seq <= self._stale_upto or row.seq in self.beside_seqs:
                    continue  # stale, or a held event the side lane has in flight (its PUBACK settles it)
                if row.seq <= self._lane(row).cursor:
                    self._stored_late(row)
                else:
                    self._fresh.append(row)
            self._fresh.sort(key=lambda r: r.seq)  # hand-offs from two threads may arrive out of order
        self._fresh = fresh = [r for r in self._fresh if r.seq > self._lane(r).cursor]  # the rest went out
        if self._suspect:
            self._suspect &= self._inflight.keys()
        if self._suspect or self._alarms.retry_at or self._routine.retry_at:
            return None
        if pending != len(self._inflight) + len(fresh):
            return None  # a backlog, or a commit whose hand-off has not arrived yet
        return fresh

    def _due_retries(self, lane: _Lane, now: float, room: int) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        retry_at = lane.retry_at
        for seq in sorted(retry_at):
            if len(rows) >= room:
                break
            if retry_at[seq] > now or seq in self.beside_seqs:  # the side lane sends it (held, stored meanwhile)
                continue
            row = self.outbox.get(seq)
            if row is None:
                del retry_at[seq]
                continue
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        retries = len(self._alarms.retry_at) + len(self._routine.retry_at)
        return (
            f"<SendWindow inflight={len(self._inflight)} retries={retries} "
            f"cursor={self._routine.cursor} alarm_cursor={self._alarms.cursor}>"
        )
