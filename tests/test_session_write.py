"""The PUBLISH leaves from the publishing thread (Session.writing), not after paho's network thread wakes up.

A real mosquitto and a real Session: the socket write is recorded with the
thread that made it.  Without it, paho's own thread writes the packet.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.model import BrokerAddress
from agent.session import Dialect, Session
from tests.support.agentproc import write_config
from tests.support.broker import Broker


@pytest.mark.broker
def test_flush__publish_is_written_by_the_publishing_thread_and_acknowledged(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(write_config(tmp_path, broker.port, device="flush")).mqtt
    acks: list[tuple[int, str | None]] = []
    acked = threading.Event()

    def on_ack(mid: int, refusal: str | None) -> None:
        acks.append((mid, refusal))
        acked.set()

    with Session(
        cfg,
        BrokerAddress("127.0.0.1", broker.port),
        Dialect("5", retain=True),
        will=("t/flush/status", b"{}"),
        wake=lambda: None,
        on_ack=on_ack,
        on_message=lambda *_a: None,
    ) as s:
        assert s.open() is None
        assert s.verdict(10.0) is None
        writers: list[str] = []
        send = s.client._sock_send

        def recording_send(data: bytes | bytearray) -> int:
            writers.append(threading.current_thread().name)
            return send(data)

        monkeypatch.setattr(s.client, "_sock_send", recording_send)
        with s.writing():
            mid = s.publish("t/flush/event/panic", b'{"seq":1}')
            assert mid is not None
        assert acked.wait(10.0), "no PUBACK for the flushed publish"
        assert acks == [(mid, None)]
        assert writers[0] == threading.current_thread().name, f"written by {writers}"
