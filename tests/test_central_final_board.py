"""The final board (``--once``, ``q``) never calls a heartbeating fleet overdue while the monitor's own link is down."""

from __future__ import annotations

import io
import queue
import types
from typing import Any

from agent.central.inbox import Incoming
from agent.central.session import MonitorOptions, _Session
from tests.central.test_monitor import T0, enc, status, topic


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_final_board__link_down_does_not_call_heartbeating_devices_overdue() -> None:
    link = types.SimpleNamespace(listening_since=T0, down_since=None, broker=None)
    clock, out = _Clock(), io.StringIO()
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    session = _Session(link, inbox, "campus", MonitorOptions(table_every_s=0.0), out, wall=clock, mono=clock)  # type: ignore[arg-type]
    session._settled(clock())
    inbox.put(Incoming(topic("status"), enc(status(ts=T0)), False, T0))  # a live heartbeat
    session._drain(0.0)
    link.listening_since, link.down_since = None, T0 + 1  # the monitor's own link goes down
    clock.now = T0 + 600
    before = out.getvalue()
    session._closing = True
    session._board(clock(), full=False)
    shown = out.getvalue()[len(before) :]
    assert "no heartbeat for" not in shown, f"a deaf monitor flagged the fleet:\n{shown}"
