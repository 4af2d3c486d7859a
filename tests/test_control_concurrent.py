"""Idle or slow control clients cannot make a healthy agent look dead.

Requests used to be served one at a time, each allowed REQUEST_DEADLINE_S = 2 s: two clients that
connected and said nothing (a hung script, an ``nc -U`` left open) made doctor's 2 s probe fail,
three made ``campus-agent status`` (5 s) fail.  Each connection now has its own short-lived
thread, at most MAX_CONNECTIONS at once; changes still go one at a time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from agent.control import MAX_CONNECTIONS, ControlServer, read_only
from agent.control_client import request
from agent.errors import ControlError
from tests.support.agentproc import short_socket_path
from tests.support.waiting import eventually


class _Slow:
    """A change that holds on until released (an SD card's fsync), counting how many run at once."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.inside = 0
        self.most_inside = 0
        self.done = 0

    def __call__(self, _req: dict[str, Any]) -> dict[str, Any]:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        self.started.set()
        self.release.wait(10)
        self.inside -= 1
        self.done += 1
        return {}


@pytest.fixture
def slow() -> _Slow:
    return _Slow()


@pytest.fixture
def server(slow: _Slow) -> Iterator[ControlServer]:
    srv = ControlServer(short_socket_path(), {"status": read_only(lambda _r: {"state": "fine"}), "simulate": slow})
    srv.start()
    yield srv
    slow.release.set()
    srv.close()


def _idle(stack: ExitStack, path: Path, count: int) -> list[socket.socket]:
    """Clients that connect and say nothing; closed when ``stack`` ends."""
    out = []
    for _ in range(count):
        s = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        s.connect(str(path))
        out.append(s)
    return out


def _conn_threads() -> int:
    return sum(t.name == "control-conn" for t in threading.enumerate())


def test_control_concurrent__idle_clients_do_not_hold_status(server: ControlServer) -> None:
    with ExitStack() as stack:
        _idle(stack, server.path, MAX_CONNECTIONS - 1)
        assert request(server.path, "status", timeout=1.0) == {"ok": True, "state": "fine"}  # was 2 s per idle client


def test_control_concurrent__beyond_the_cap_a_client_is_turned_away_soon(server: ControlServer) -> None:
    with ExitStack() as stack:
        _idle(stack, server.path, MAX_CONNECTIONS)  # accepted in order: these take every slot
        t0 = time.monotonic()
        with pytest.raises(ControlError, match=f"already serving {MAX_CONNECTIONS} control connections"):
            request(server.path, "status", timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        assert _conn_threads() <= MAX_CONNECTIONS
    eventually(
        lambda: request(server.path, "status", timeout=1.0),
        5,
        "status once the idle clients left",
        retry_on=(ControlError,),
    )


def test_control_concurrent__status_answers_while_a_change_is_carried_out(server: ControlServer, slow: _Slow) -> None:
    change = threading.Thread(target=request, args=(server.path, "simulate"), kwargs={"timeout": 10})
    change.start()
    try:
        assert slow.started.wait(5)
        assert request(server.path, "status", timeout=1.0)["state"] == "fine"
        with pytest.raises(ControlError, match="still busy with another change"):
            request(server.path, "simulate", timeout=0.6)  # changes go one at a time
    finally:
        slow.release.set()
        change.join(10)
    assert slow.most_inside == 1
    assert slow.done == 1, "the refused change was carried out all the same"


def test_control_concurrent__a_request_beside_idle_clients_is_answered_by_its_own_thread(
    server: ControlServer,
) -> None:
    """A raw client (no deadline, like an older CLI) among idle ones, then close with them still open."""
    with ExitStack() as stack:
        _idle(stack, server.path, 2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(server.path))
            s.sendall(b'{"cmd": "status"}\n')
            assert json.loads(s.makefile("rb").readline()) == {"ok": True, "state": "fine"}
        t0 = time.monotonic()
        server.close()  # the idle clients are still connected
        assert time.monotonic() - t0 < 1.0, "close() waited out the idle clients"
    assert _conn_threads() == 0


def test_control_concurrent__a_slot_freed_a_moment_later_serves_the_next_client(server: ControlServer) -> None:
    """A script's next request can arrive before the thread that answered its last one has ended: with every slot
    taken for that moment it was turned away at once (a fault test's presses, one after another, were refused)."""
    with ExitStack() as stack:
        idle = _idle(stack, server.path, MAX_CONNECTIONS)
        eventually(lambda: _conn_threads() >= MAX_CONNECTIONS, 5, "every slot taken")
        answer: list[object] = []
        asking = threading.Thread(target=lambda: answer.append(request(server.path, "status", timeout=2.0)))
        asking.start()
        time.sleep(0.05)  # the request is waiting at the accept loop meanwhile
        idle[0].close()  # its thread sees the end of the stream and frees its slot
        asking.join(5)
    assert answer == [{"ok": True, "state": "fine"}]
