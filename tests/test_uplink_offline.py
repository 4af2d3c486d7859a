"""The uplink with no broker to reach: the warning it logs, its repr, close(), context-manager use, a blackhole."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.support.broker import free_port
from tests.support.uplinkrig import RigFactory, mqtt_cfg
from tests.support.waiting import eventually


def test_uplink__unreachable_broker_log_says_what_and_next(
    tmp_path: Path, device: str, rig_factory: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    dead = free_port()
    rig = rig_factory(mqtt_cfg(dead, client_id=device), device)
    rig.put(3)
    with caplog.at_level(logging.WARNING, logger="agent.uplink"):
        rig.uplink.start()
        eventually(lambda: "unreachable" in caplog.text, what="a warning")
    line = next(r.getMessage() for r in caplog.records if "unreachable" in r.getMessage())
    assert f"broker 127.0.0.1:{dead} unreachable (TCP: connection refused); 3 events buffered; retrying in" in line


def test_uplink__repr_close_and_context_manager(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = free_port()
    with Uplink(
        mqtt_cfg(dead, client_id="x"), topic_root="campus/s/d", outbox=outbox, status=dict, offline=lambda r: {}
    ) as up:
        assert repr(up) == "<Uplink campus/s/d disconnected (connecting) inflight=0>"
        up.start()
        eventually(lambda: up.state().last_error, what="a failed attempt")
        assert "TCP: connection refused" in repr(up)
    assert repr(up) == "<Uplink campus/s/d closed>"
    assert not any(t.name == "uplink-sender" and t.is_alive() for t in threading.enumerate()), "close() joins it"
    up.close()  # idempotent
    # A sender started after close() would exit at once (the stop flag stays set), so whether a
    # thread is alive afterwards proves nothing: count the threads start() launches instead.
    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    with monkeypatch.context() as m:
        m.setattr(threading.Thread, "start", counting_start)
        up.start()  # a closed uplink stays closed
    assert started == [], f"start() after close() launched {started}"


def test_uplink__stop_during_the_connack_wait_ends_the_sender(outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """A broker that takes TCP and never answers MQTT: stop() must not wait out connect_timeout_s.

    The CONNACK wait is 60 s here and stop() joins the sender for at most 5 s, so
    without the stop check in the wait the sender is still running when stop() returns.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(30)
        port = int(server.getsockname()[1])
        cfg = mqtt_cfg(port, client_id="blackholed", connect_timeout_s=60.0)
        up = Uplink(cfg, topic_root="campus/s/d", outbox=outbox, status=dict, offline=lambda r: {})
        with caplog.at_level(logging.INFO, logger="agent.uplink"):
            up.start()
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                assert conn.recv(1), "the CONNECT packet"  # sent: the sender now waits for the CONNACK
                up.close()
        assert not any(t.name == "uplink-sender" and t.is_alive() for t in threading.enumerate()), caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_teardown__a_failing_settle_still_forgets_the_sessions_message_ids(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next session's paho numbers from 1 again: a stale id kept would match a new PUBACK.

    Held events in flight (the side lane) would then count as delivered without being sent.
    """
    from agent.errors import OutboxError
    from agent.events import Event, EventType
    from tests.support.clocks import synced_clock

    uplink = Uplink(
        mqtt_cfg(free_port(), client_id="x"), topic_root="campus/s/d", outbox=outbox, status=dict, offline=lambda r: {}
    )
    row = outbox.put_row(Event.create(synced_clock(), EventType.PANIC, "panic"))
    uplink._side._inflight[7] = row
    uplink._window.sent(8, row)

    def fail(_now: float) -> set[int]:
        raise OutboxError("outbox: cannot delete acknowledged events: database is locked")

    class Gone:
        def close(self) -> None:
            pass

    monkeypatch.setattr(uplink._pubacks, "settle", fail)
    with pytest.raises(OutboxError):
        uplink._teardown(Gone())  # type: ignore[arg-type]
    assert uplink._side._inflight == {}
    assert len(uplink._window) == 0
