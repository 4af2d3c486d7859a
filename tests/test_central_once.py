"""``monitor --once`` and every board: the header counts what the rows show.

A hunt found that ticks wait :data:`~agent.central.session.SETTLE_S` (2 s)
after the SUBACK while ``--once`` runs for 1 s: the tick never ran, so a
device silent for ten minutes was never flagged, and the header said
``0 OVERDUE`` above a row that said ``OVERDUE`` (rows work it out on the fly).
"""

from __future__ import annotations

import io
import queue
import time
import types
import uuid
from typing import Any

import pytest

from agent.central.inbox import Incoming
from agent.central.monitor import ONCE_S
from agent.central.session import SETTLE_S, MonitorOptions, Target, _Session, run_monitor
from agent.central.settings import LinkSettings
from agent.config.model import BrokerAddress
from tests.central.test_monitor import T0, enc, status, topic
from tests.support.broker import Broker
from tests.support.mqtt import Central


@pytest.mark.broker
@pytest.mark.parametrize("full", [False, True], ids=["board", "table"])
def test_once__flags_a_device_silent_for_ten_minutes_in_header_and_rows(
    broker: Broker, central: Central, full: bool
) -> None:
    dev = f"gate-{uuid.uuid4().hex[:8]}"
    central.publish(topic("status", dev), enc(status(dev, ts=time.time() - 600)), retain=True)  # PUBACK: stored
    try:
        out = io.StringIO()
        opts = MonitorOptions(table_every_s=0.0, duration_s=ONCE_S, full_table=full)  # what --once sets
        run_monitor(Target(LinkSettings((BrokerAddress("127.0.0.1", broker.port),))), opts, out=out, err=io.StringIO())
        board = out.getvalue()
        row = next((ln for ln in board.splitlines() if f"main/{dev} " in ln and "OVERDUE  " in ln), None)
        assert row is not None, f"the device silent for 10 minutes is not shown OVERDUE:\n{board}"
        assert " 0 OVERDUE" not in board, f"the header counts no overdue device above its row:\n{board}"
    finally:
        central.publish(topic("status", dev), b"", retain=True)


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _session(since: float | None) -> tuple[_Session, Any, _Clock, io.StringIO]:
    link = types.SimpleNamespace(listening_since=since, down_since=None)
    clock, out = _Clock(), io.StringIO()
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    opts = MonitorOptions(table_every_s=0.0)
    session = _Session(link, inbox, "campus", opts, out, wall=clock, mono=clock)  # type: ignore[arg-type]
    return session, link, clock, out


def _silent_device(session: _Session) -> None:
    """A retained status sent 10 minutes ago by a synchronised clock: its deadline passed long ago."""
    session.inbox.put(Incoming(topic("status"), enc(status(ts=T0 - 600)), True, T0))
    session._drain(0.0)


def test_board__on_the_first_subscription_ticks_first_so_header_and_rows_agree() -> None:
    session, _, _, out = _session(since=T0)
    _silent_device(session)
    session._board(T0, full=False)
    board = out.getvalue()
    assert "OVERDUE          no heartbeat for 10 min" in board, board
    assert "1 devices: 0 online, 1 OVERDUE" in board, board


def test_board__right_after_a_reconnect_does_not_tick_until_settled() -> None:
    """A deaf monitor is not a silent fleet: the renewed retained statuses come behind the SUBACK."""
    session, link, clock, out = _session(since=T0)
    _silent_device(session)
    session._settled(clock())  # the run's first subscription, seen
    link.listening_since = T0 + 1  # a reconnect: a new SUBACK stamp
    clock.now = T0 + 1
    session._board(clock(), full=False)
    assert "no heartbeat for" not in out.getvalue()
    assert "1 devices: 1 online, 0 OVERDUE" in out.getvalue()
    clock.now = T0 + 1 + SETTLE_S
    session._board(clock(), full=False)
    assert "no heartbeat for" in out.getvalue()


def test_board__does_not_tick_while_messages_wait_unread() -> None:
    session, _, _, out = _session(since=T0)
    _silent_device(session)
    session.inbox.put(Incoming(topic("status"), enc(status(ts=T0)), False, T0))  # its fresh status, not yet read
    session._board(T0, full=False)
    assert "no heartbeat for" not in out.getvalue()
