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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.outbox import Outbox, OutboxRow

REFUSED_RETRY_MIN_S = 5.0
REFUSED_RETRY_MAX_S = 600.0
# An alarm is worth a retry every few seconds: the broker may refuse for a moment (quota, overload),
# and once an ACL is fixed the alarm should follow within seconds, not ten minutes.
REFUSED_ALARM_RETRY_MIN_S = 1.0
REFUSED_ALARM_RETRY_MAX_S = 15.0


@dataclass
class _Lane:
    """One lane's reading position and its refused rows (seq → when due again)."""

    urgent: bool
    cursor: int = 0
    retry_at: dict[int, float] = field(default_factory=dict)


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
        self._alarms = _Lane(urgent=True)
        self._routine = _Lane(urgent=False)
        self._refusals: dict[int, int] = {}
        self._next_send = 0.0
        self._paced = False
        self.refused_alarms = 0  # refusals of real alarms since start: each one is also logged as CRITICAL

    def reset(self) -> None:
        """A new connection: nothing is in flight, everything is sent again (real alarms first)."""
        self._inflight.clear()
        self._alarms = _Lane(urgent=True)
        self._routine = _Lane(urgent=False)
        self._refusals.clear()

    def __len__(self) -> int:
        return len(self._inflight)

    def take(self, now: float) -> list[OutboxRow]:
        """The rows that may be published now: real alarms first, then the rest; each in ``seq`` order."""
        self._paced = False
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return []
        self._next_send = max(self._next_send, now - (self.max_inflight - 1) / self.rate)  # burst: one window
        if self._next_send > now:
            self._paced = True
            # A real alarm may borrow the next token: it goes now and the row after it waits one
            # interval longer.  Only one can be borrowed, so the long-run rate stays ``rate``.
            return self._from_lane(self._alarms, now, 1) if self._next_send - now <= 1.0 / self.rate else []
        budget = min(room, int((now - self._next_send) * self.rate + 1e-6) + 1)  # 1e-6: float dust
        rows = self._from_lane(self._alarms, now, budget)
        # The last free slot is kept for an alarm, so one recorded later never waits for a routine
        # row's PUBACK (a slow broker's round trip) before it can go.
        spare = 1 if self.max_inflight > 1 else 0
        rows += self._from_lane(self._routine, now, min(budget, room - spare) - len(rows))
        self._paced = len(rows) == budget < room
        return rows

    def sent(self, mid: int, row: OutboxRow) -> None:
        """``row`` went out as paho message ``mid``."""
        lane = self._lane(row)
        lane.retry_at.pop(row.seq, None)
        self._next_send += 1.0 / self.rate
        self._inflight[mid] = row
        lane.cursor = max(lane.cursor, row.seq)

    def settle(self, mid: int, *, refused: bool, now: float) -> tuple[OutboxRow | None, float | None]:
        """A PUBACK for ``mid``: return (row, None) when delivered, (row, retry delay) when refused.

        ``(None, None)`` for a message id we did not send (a status or a reply).
        """
        row = self._inflight.pop(mid, None)
        if row is None:
            return None, None
        if not refused:
            self._refusals.pop(row.seq, None)
            return row, None
        n = self._refusals.get(row.seq, 0)
        if row.urgent:
            self.refused_alarms += 1
            delay = min(REFUSED_ALARM_RETRY_MAX_S, REFUSED_ALARM_RETRY_MIN_S * 2 ** min(n, 16))
        else:
            delay = min(REFUSED_RETRY_MAX_S, REFUSED_RETRY_MIN_S * 2 ** min(n, 16))
        self._refusals[row.seq] = n + 1
        self._lane(row).retry_at[row.seq] = now + delay
        return row, delay

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long the sender may sleep before something could be due (news wakes it earlier)."""
        if len(self._inflight) >= self.max_inflight:
            return idle_s
        if self._paced:
            return max(0.0, self._next_send - now)
        due = [t for lane in (self._alarms, self._routine) for t in lane.retry_at.values()]
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
            rows += self.outbox.next_batch(lane.cursor, room - len(rows), urgent=lane.urgent)
        return rows

    def _due_retries(self, lane: _Lane, now: float, room: int) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        retry_at = lane.retry_at
        for seq in sorted(retry_at):
            if len(rows) >= room:
                break
            if retry_at[seq] > now:
                continue
            row = self.outbox.get(seq)
            if row is None:
                del retry_at[seq]
                continue
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        retries = len(self._alarms.retry_at) + len(self._routine.retry_at)
        return (f"<SendWindow inflight={len(self._inflight)} retries={retries} "
                f"cursor={self._routine.cursor} alarm_cursor={self._alarms.cursor}>")
