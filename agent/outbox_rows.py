"""What the outbox hands out: a stored row ready to publish, and the figures for the status document.

Kept apart from :mod:`agent.outbox` so the send window, the recorder and the
hand-off can name a row without the storage around it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.events import with_seq
from agent.outbox_lanes import URGENT_MARK

# (seq, or None for the outbox's counter to give one, id, type, alarm, created_ms, body): one row as inserted
Row = tuple[int | None, str, str, int, int, str]


@dataclass(frozen=True)
class OutboxRow:
    """One stored event, ready to publish."""

    seq: int
    id: str
    type: str
    alarm: bool
    created: float
    body: str

    @property
    def payload(self) -> bytes:
        return with_seq(self.body, self.seq)

    @property
    def urgent(self) -> bool:
        """A real alarm (panic or tamper, not a test press): sent before every other row."""
        return self.alarm and URGENT_MARK in self.body

    @classmethod
    def from_db(cls, r: tuple[int, str, str, int, int, str]) -> OutboxRow:
        return cls(r[0], r[1], r[2], bool(r[3]), r[4] / 1000.0, r[5])


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    oldest_age_s: float | None
    dropped: int
    db_bytes: int
    cap_bytes: int
    disk_low: bool
    last_seq: int


def as_row(r: OutboxRow) -> Row:
    """The insert's tuple for a row that already has its seq (the inverse of :func:`stored`)."""
    return (r.seq, r.id, r.type, int(r.alarm), round(r.created * 1000), r.body)


def stored(row: Row, seq: int) -> OutboxRow:
    """The row as committed under ``seq``, as :meth:`Outbox.next_batch` would read it back."""
    return OutboxRow(seq, row[1], row[2], bool(row[3]), row[4] / 1000.0, row[5])
