"""Settling PUBACKs when the outbox refuses the delete: delivered is delivered, nothing held is lost.

Real SQLite file; the delete's failure (a busy timeout, an I/O error) is
injected at the outbox's ``ack``, the one I/O this step does.
"""

from __future__ import annotations

import logging

import pytest

from agent.errors import OutboxError
from agent.events import Event, EventType
from agent.outbox import Outbox, OutboxRow
from agent.pubacks import PubAcks
from agent.sendwindow import SendWindow
from agent.sidelane import SideLane
from tests.support.clocks import synced_clock


def test_pubacks__a_failed_delete_still_counts_the_delivery_and_keeps_the_rows(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    delivered: list[OutboxRow] = []
    window = SendWindow(outbox, max_inflight=10, rate_per_s=1e6)
    side = SideLane("campus/main/d", held=None, photos=None, on_delivered=delivered.append)
    acks = PubAcks(window, side, outbox, "campus/main/d", delivered.append)
    seqs = [outbox.put(Event.create(synced_clock(), EventType.PANIC, "panic")) for _ in range(3)]
    for mid, row in enumerate(window.take(100.0), start=1):
        window.sent(mid, row)
        acks.put(mid, None)

    def refuse(_seqs: object) -> int:
        raise OutboxError("outbox /x: cannot delete acknowledged events: database is locked")

    monkeypatch.setattr(outbox, "ack", refuse)
    with caplog.at_level(logging.WARNING):
        assert acks.settle(100.1) == set()  # raised before: the sender's round ended the session
    assert [r.seq for r in delivered] == seqs
    assert acks.delivered == 3
    assert "may be sent once more" in caplog.text
    monkeypatch.undo()
    assert outbox.pending() == 3  # still there: the next session sends them again, never loses them
