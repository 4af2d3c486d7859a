"""How the sender reads the outbox: two lanes, real alarms and the rest, each in ``seq`` order.

A real alarm is a ``panic`` or ``tamper`` row that is not a test press.  The
sender reads the alarm lane first, so an alarm never waits behind a backlog,
and each lane in ``seq`` order.  ``test`` is read from the stored body
(:meth:`agent.events.Event.body` writes ``"test":false`` for every real
press; inside a JSON string a quote is escaped, so the marker cannot match
there): the insert needs no new column, and an outbox written by an older
agent is upgraded in place by one ``CREATE INDEX`` when it is opened.
``instr`` never raises, so even a salvaged row with a garbled body can still
be inserted (it then counts as routine).  Adding an index keeps the file
readable by older agents, so the outbox's schema version does not change.
"""

from __future__ import annotations

import sqlite3
from typing import Any

URGENT_MARK = '"test":false'
_URGENT = f"(alarm = 1 AND instr(body, '{URGENT_MARK}') > 0)"
# One entry per row, keyed (urgent, seq): both lanes are one index range each, whatever the other holds.
LANE_INDEX = f"CREATE INDEX IF NOT EXISTS outbox_lane ON outbox ({_URGENT}, seq);"
COLUMNS = "seq, id, type, alarm, created_ms, body"
_ALL = f"SELECT {COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?"  # noqa: S608 - constants only
_LANE = (
    f"SELECT {COLUMNS} FROM outbox INDEXED BY outbox_lane "  # noqa: S608 - constants only
    f"WHERE {_URGENT} = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_ONE = f"SELECT {COLUMNS} FROM outbox WHERE seq = ?"  # noqa: S608 - constants only


def select_batch(conn: sqlite3.Connection, after_seq: int, limit: int, urgent: bool | None) -> list[Any]:
    """The oldest ``limit`` rows above ``after_seq`` of one lane (``None``: of both), in ``seq`` order.

    Rows are tuples of ``COLUMNS``.
    """
    if urgent is None:
        return conn.execute(_ALL, (after_seq, limit)).fetchall()
    return conn.execute(_LANE, (int(urgent), after_seq, limit)).fetchall()


def select_one(conn: sqlite3.Connection, seq: int) -> Any:
    """Row ``seq`` as a tuple of ``COLUMNS``, or None."""
    return conn.execute(_ONE, (seq,)).fetchone()
