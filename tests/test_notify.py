"""sd_notify: READY, STATUS, WATCHDOG only while threads make progress, STOPPING."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.notify import Notifier
from agent.session import Session
from tests.support.agentproc import write_config
from tests.support.broker import free_port
from tests.support.waiting import eventually, never


class NotifySocket:
    """Plays systemd's side: the datagram socket a Type=notify daemon reports to."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.path: str | None = None
        if abstract:
            name = f"test-notify-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.path = os.path.join(tempfile.mkdtemp(prefix="ntf-", dir="/tmp"), "notify.sock")
            self.sock.bind(self.path)
            self.env_value = self.path

    def recv(self, timeout: float) -> tuple[int | None, dict[str, str]] | None:
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = None
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", cdata[:12])
        return pid, dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)

    def until(self, pred: Callable[[dict[str, str]], bool], timeout: float) -> dict[str, str]:

        def matching() -> dict[str, str] | None:
            got = self.recv(0.05)
            return got[1] if got is not None and pred(got[1]) else None

        return eventually(matching, timeout, "the expected notification")

    def close(self) -> None:
        self.sock.close()
        if self.path:
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    ns = NotifySocket(abstract=request.param)
    yield ns
    ns.close()


def test_notifier__noop_outside_systemd() -> None:
    n = Notifier(env={})
    assert not n.enabled
    assert n.send("READY=1") is False
    assert n.watchdog_interval is None


def test_notifier__watchdog_interval_is_half_and_respects_pid() -> None:
    assert Notifier(env={"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2).watchdog_interval is None
    assert Notifier(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7).watchdog_interval == 15.0


def test_notifier__sends_to_path_and_abstract_sockets(notify_socket: NotifySocket) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": notify_socket.env_value})
    assert n.ready("inputs armed")
    got = notify_socket.recv(2)
    assert got is not None
    pid, msg = got
    assert msg == {"READY": "1", "STATUS": "inputs armed"}
    assert pid == os.getpid()


@pytest.mark.broker
def test_watchdog__fed_while_healthy_and_stops_when_sender_hangs(
    notify_socket: NotifySocket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY arrives with the broker down; WATCHDOG stops once the sender thread hangs.

    Seeing the hang takes ``stall_after_s`` (15 s) and does not depend on the
    kind of socket, so only the path socket waits for it; the abstract one
    checks READY, WATCHDOG and STOPPING.
    """
    cfg = load_config(write_config(tmp_path, free_port(), device="wd-1"))
    env = {"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "400000"}
    agent = Agent(cfg, notifier=Notifier(env=env))
    agent.stall_after_s = 15.0  # above the 10 s idle sleeps of the healthy threads
    hang = threading.Event()
    agent.start()
    server = threading.Thread(target=agent.serve, daemon=True)
    server.start()
    try:
        ready = notify_socket.until(lambda m: "READY" in m, 10)
        assert "inputs armed" in ready["STATUS"]
        for _ in range(3):
            notify_socket.until(lambda m: m.get("WATCHDOG") == "1", 5)
        if notify_socket.path is not None:
            _hang_the_sender(agent, notify_socket, hang, monkeypatch)
    finally:
        hang.set()
        agent.request_stop()
        server.join(5)
        agent.stop()
    assert notify_socket.until(lambda m: "STOPPING" in m, 5)["STOPPING"] == "1"


def _hang_the_sender(
    agent: Agent, notify_socket: NotifySocket, hang: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hang the sender thread until ``hang`` is set; the agent must say so and stop feeding the watchdog."""
    assert agent.uplink is not None

    def stuck_round(_s: Session) -> float:
        hang.wait(30)
        return 0.1

    def stuck_sleep(_s: float) -> None:
        hang.wait(30)

    monkeypatch.setattr(agent.uplink, "_send_round", stuck_round)
    monkeypatch.setattr(agent.uplink, "_sleep", stuck_sleep)  # the sender is between attempts while the broker is down
    stalled = notify_socket.until(lambda m: m.get("STATUS", "").startswith("stalled"), 30)
    assert "uplink-sender" in stalled["STATUS"]
    seen: list[dict[str, str]] = []

    def watchdog_ping() -> bool:
        got = notify_socket.recv(0.05)
        if got is not None:
            seen.append(got[1])
        return got is not None and "WATCHDOG" in got[1]

    never(watchdog_ping, 1.0, "WATCHDOG=1 while a thread is stuck")  # five feeding periods (0.2 s)
    assert seen, "the agent should keep reporting its stalled status"


def test_paths_fit_unix_socket_limit() -> None:
    assert len(str(Path(tempfile.gettempdir()) / "ntf-xxxxxxxx" / "notify.sock")) < 107
