"""SIGTERM ends the agent within systemd's TimeoutStopSec, wherever in its life it lands.

The hang these guard against: the SIGTERM handler set a ``threading.Event``
whose lock the main thread held inside ``Event.wait()`` in ``serve()``; the
handler then waited on its own thread forever (agent/stopflag.py).  It showed
as one stop in ~45 that never ended right after ``READY=1``.  A hung agent is
shown with every thread's stack: the agent runs with ``PYTHONFAULTHANDLER``,
and a test that gives up on it sends SIGABRT, which makes faulthandler print
the stacks into the log shown in the failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.notify import Notifier
from agent.stopflag import StopFlag
from tests.support.agentproc import ROOT, short_socket_path, write_config
from tests.support.broker import free_port
from tests.support.stopstress import BOUND_S
from tests.support.waiting import eventually

STRESS_S = 10.0  # the in-process stress stops starting runs after this; a hang adds BOUND_S


def test_sigterm__never_deadlocks_the_stop(tmp_path: Path) -> None:
    """Hundreds of stops by a real SIGTERM, most right after READY=1 with a spinning serve loop: all end.

    Without the lock-free stop flag one stop in a few dozen hung here (the stack
    shows the handler's ``Event.set`` waiting inside ``Event.wait``).
    """
    cfg = write_config(tmp_path, free_port(), device="stop-stress")  # no broker: as in the field report
    r = subprocess.run(
        [sys.executable, "-m", "tests.support.stopstress", str(cfg), "400", str(STRESS_S)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=STRESS_S + BOUND_S + 60,
        check=False,
    )
    assert r.returncode == 0, f"a stop hung (rc={r.returncode}):\n{r.stderr[-20000:]}"
    runs = int(r.stdout.split()[-1])
    assert runs >= 10, f"only {runs} runs in {STRESS_S:g} s: the stress did not exercise the stop\n{r.stderr[-5000:]}"


class _Notify:
    """systemd's side of NOTIFY_SOCKET for one agent process."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ntf-", dir="/tmp")
        self.path = os.path.join(self.dir, "n.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.ready = False

    def poll(self) -> bool:
        """Read what is waiting (never blocks); True once READY=1 came."""
        self.sock.setblocking(False)
        try:
            while not self.ready:
                self.ready = "READY=1" in self.sock.recv(4096).decode().splitlines()
        except BlockingIOError:
            pass
        return self.ready

    def close(self) -> None:
        self.sock.close()
        Path(self.path).unlink(missing_ok=True)
        os.rmdir(self.dir)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that completes the TCP handshake (the backlog) but never answers MQTT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def _stop_at(tmp_path: Path, port: int, point: str) -> None:
    """Start ``python -m agent run``, send SIGTERM at ``point``, and require the exit within BOUND_S."""
    sock = short_socket_path()
    cfg = write_config(
        tmp_path / point,
        port,
        device=f"stop-{point}",
        mqtt={"connect_timeout_s": 1},
        control={"socket": str(sock)},
    )
    log = cfg.with_suffix(".log")
    notify = _Notify()
    points: dict[str, Callable[[], bool]] = {
        "spawned": lambda: True,
        "control-socket": sock.exists,  # half-way through start(): uplink and heartbeat running
        "ready": notify.poll,
        "backoff": lambda: "unreachable" in log.read_text(),  # the sender failed an attempt and waits
    }
    with open(log, "wb") as logf:
        p = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(cfg), "--allow-root"],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=notify.path, PYTHONFAULTHANDLER="1"),
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    try:

        def reached() -> bool:
            if p.poll() is not None:
                raise AssertionError(f"the agent exited with {p.returncode} before {point}:\n{log.read_text()}")
            return points[point]()

        eventually(reached, 30, f"the agent to reach {point}", interval=0.01)
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(BOUND_S)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            p.wait(10)
            pytest.fail(f"SIGTERM at {point}: still running after {BOUND_S:g} s; its log:\n{log.read_text()}")
        allowed = {0, -signal.SIGTERM} if point == "spawned" else {0}  # before run() puts its handler in
        assert rc in allowed, f"SIGTERM at {point}: exit code {rc}; its log:\n{log.read_text()}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        notify.close()


@pytest.mark.parametrize("point", ["spawned", "control-socket", "ready", "backoff"])
def test_sigterm__broker_down__exits_within_the_bound(tmp_path: Path, point: str) -> None:
    _stop_at(tmp_path, free_port(), point)


@pytest.mark.parametrize("point", ["ready", "backoff"])
def test_sigterm__broker_blackholed__exits_within_the_bound(tmp_path: Path, blackhole: int, point: str) -> None:
    _stop_at(tmp_path, blackhole, point)


def test_notifier__full_notify_socket_does_not_hold_the_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """systemd too busy to read its socket: STOPPING=1 (the stop's first step) gives up instead of blocking."""
    d = tempfile.mkdtemp(prefix="ntf-", dir="/tmp")
    path = os.path.join(d, "n.sock")
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    outcome: list[bool] = []

    def fill_then_stop() -> None:  # the queue holds net.unix.max_dgram_qlen datagrams (10 to 512)
        sent = 0
        while sent < 5000 and notifier.status(f"filler {sent}"):
            sent += 1
        outcome.append(notifier.stopping())

    t = threading.Thread(target=fill_then_stop, daemon=True)
    try:
        t.start()
        eventually(lambda: outcome, 30, "the notifier to give up on a full notify socket")
        assert outcome == [False]
        assert "cannot notify systemd" in caplog.text
    finally:
        unread.close()  # wakes a send still blocked (no timeout) with an error
        t.join(10)
        Path(path).unlink()
        os.rmdir(d)


def test_stop_flag__set_from_another_thread_wakes_the_waiter() -> None:
    with StopFlag() as flag:
        assert repr(flag) == "<StopFlag clear>"
        assert flag.wait(0) is False
        waker = threading.Thread(target=flag.set)
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(flag.wait(60)))
        waiter.start()
        waker.start()
        eventually(lambda: woke, 30, "the waiter to wake")
        assert woke == [True]
        assert flag.is_set()
        assert repr(flag) == "<StopFlag set>"
        waiter.join(10)
        waker.join(10)
    assert repr(flag) == "<StopFlag closed>"
    flag.set()  # a late signal after close(): nothing written, nothing raised
    flag.close()
    assert flag.wait(60) is True
