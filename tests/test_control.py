"""The control socket: a client that trickles its request cannot hold the socket past the deadline."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control import REQUEST_DEADLINE_S, ControlServer
from agent.control_client import request
from agent.errors import ControlError
from tests.support.agentproc import short_socket_path


@pytest.fixture
def server() -> Iterator[ControlServer]:
    srv = ControlServer(short_socket_path(), {"status": lambda _req: {"state": "fine"}})
    srv.start()
    yield srv
    srv.close()


class Trickler:
    """Sends one byte of a request every ``gap_s`` (below any per-recv timeout), never a newline."""

    def __init__(self, path: Path, gap_s: float = 0.5, max_bytes: int = 60) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.cut_off = threading.Event()
        self._stop = threading.Event()
        self._gap_s = gap_s
        self._max = max_bytes
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for _ in range(self._max):  # bounded: at most max_bytes * gap_s seconds
                self.sock.sendall(b"{")
                if self._stop.wait(self._gap_s):
                    return
        except OSError:
            self.cut_off.set()  # the server closed the connection: what the deadline is for

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


def test_control__trickling_client_cannot_block_status(server: ControlServer) -> None:
    slow = Trickler(server.path)
    try:
        # Without an overall deadline this waits for the trickler's 30 s; with it, a few seconds at most.
        reply: dict[str, Any] = request(server.path, "status", timeout=4 * REQUEST_DEADLINE_S)
        assert reply == {"ok": True, "state": "fine"}
        assert slow.cut_off.wait(4 * REQUEST_DEADLINE_S), "the trickling client was never cut off"
    finally:
        slow.close()


def test_control__unknown_and_malformed_requests_are_answered(server: ControlServer) -> None:
    with pytest.raises(Exception, match="unknown request 'nope'; known: status"):
        request(server.path, "nope")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(server.path))
        s.sendall(b"not json\n")
        assert b"request is not JSON" in s.recv(4096)


def test_control__a_file_or_directory_at_the_path_is_left_alone(tmp_path: Path) -> None:
    """start() used to unlink whatever was there: with control.socket set to the outbox's path, the outbox."""
    victim = tmp_path / "outbox.db"
    victim.write_bytes(b"SQLite format 3\x00")
    srv = ControlServer(victim, {})
    with pytest.raises(ControlError, match="is a file that is not a socket; left alone"):
        srv.start()
    srv.close()
    assert victim.read_bytes() == b"SQLite format 3\x00"
    folder = tmp_path / "ctl"
    folder.mkdir()
    srv = ControlServer(folder, {})
    with pytest.raises(ControlError, match="is a directory"):  # was an IsADirectoryError traceback
        srv.start()
    srv.close()
    assert folder.is_dir()


def test_control__only_the_server_that_bound_the_socket_removes_it(server: ControlServer) -> None:
    second = ControlServer(server.path, {})
    with pytest.raises(ControlError, match="another agent is already running on control socket"):
        second.start()
    second.close()
    assert server.path.exists(), "the refused server removed the running one's socket"
    assert request(server.path, "status")["state"] == "fine"


def test_control__a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = short_socket_path()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: an agent killed with SIGKILL
    srv = ControlServer(path, {"status": lambda _req: {"state": "fine"}})
    try:
        srv.start()
        assert request(path, "status")["state"] == "fine"
    finally:
        srv.close()
    assert not path.exists()


def test_control__a_request_to_a_stale_socket_says_no_agent_listens() -> None:
    """It said "cannot talk to the agent ...: [Errno 111] Connection refused" after a SIGKILL."""
    path = short_socket_path()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    try:
        with pytest.raises(ControlError, match=r"no agent is listening on .*: is it running\?"):
            request(path, "status")
    finally:
        path.unlink()
