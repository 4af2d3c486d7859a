"""The send window: which outbox rows are in flight, which wait for a retry, when the next may go.

All pending-ack bookkeeping (paho message id → outbox row) lives here and is
reset in one place per connection, so an ack from an old connection can never
delete a row sent on a new one.  Pacing is a token bucket one window deep:
bursts up to ``max_inflight``, then ``rate_per_s``, so a long backlog drains
at a rate central subscribers and the broker's queues keep up with.
A row refused by the broker (an MQTT 5 PUBACK reason >= 0x80) stays in the
outbox and is retried with backoff while later rows keep flowing.
"""

from __future__ import annotations

from agent.outbox import Outbox, OutboxRow

REFUSED_RETRY_MIN_S = 5.0
REFUSED_RETRY_MAX_S = 600.0


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
        self._retry_at: dict[int, float] = {}
        self._refusals: dict[int, int] = {}
        self._cursor = 0
        self._next_send = 0.0
        self._paced = False

    def reset(self) -> None:
        """A new connection: nothing is in flight, everything is sent again from the oldest row."""
        self._inflight.clear()
        self._retry_at.clear()
        self._refusals.clear()
        self._cursor = 0

    def __len__(self) -> int:
        return len(self._inflight)

    def take(self, now: float) -> list[OutboxRow]:
        """The rows that may be published now, in ``seq`` order (due retries first)."""
        self._paced = False
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return []
        self._next_send = max(self._next_send, now - (self.max_inflight - 1) / self.rate)  # burst: one window
        if self._next_send > now:
            self._paced = True
            return []
        budget = min(room, int((now - self._next_send) * self.rate + 1e-6) + 1)  # 1e-6: float dust
        rows = self._due_retries(now, budget)
        if len(rows) < budget:
            rows += self.outbox.next_batch(self._cursor, budget - len(rows))
        self._paced = len(rows) == budget < room
        return rows

    def sent(self, mid: int, row: OutboxRow) -> None:
        """``row`` went out as paho message ``mid``."""
        self._retry_at.pop(row.seq, None)
        self._next_send += 1.0 / self.rate
        self._inflight[mid] = row
        self._cursor = max(self._cursor, row.seq)

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
        delay = min(REFUSED_RETRY_MAX_S, REFUSED_RETRY_MIN_S * 2 ** min(n, 16))
        self._refusals[row.seq] = n + 1
        self._retry_at[row.seq] = now + delay
        return row, delay

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long the sender may sleep before something could be due (news wakes it earlier)."""
        if len(self._inflight) >= self.max_inflight:
            return idle_s
        if self._paced:
            return max(0.0, self._next_send - now)
        if self._retry_at:
            return min(idle_s, max(0.01, min(self._retry_at.values()) - now))
        return idle_s

    def _due_retries(self, now: float, room: int) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        for seq in sorted(self._retry_at):
            if len(rows) >= room:
                break
            if self._retry_at[seq] > now:
                continue
            row = self.outbox.get(seq)
            if row is None:
                del self._retry_at[seq]
                continue
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        return f"<SendWindow inflight={len(self._inflight)} retries={len(self._retry_at)} cursor={self._cursor}>"
