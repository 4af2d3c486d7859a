"""The PUBLISH leaves from the publishing thread (Session.writing), not after paho's network thread wakes up.

A real mosquitto and a real Session: the socket write is recorded with the
thread that made it.  Without it, paho's own thread writes the packet.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.sessions import new_session, opened


@pytest.mark.broker
def test_flush__publish_is_written_by_the_publishing_thread_and_acknowledged(tmp_path: Path, broker: Broker) -> None:
    acks: list[tuple[int, str | None]] = []
    acked = threading.Event()

    def on_ack(mid: int, refusal: str | None) -> None:
        acks.append((mid, refusal))
        acked.set()

    with opened(new_session(tmp_path, broker.port, "flush", on_ack=on_ack)) as s:
        writers: list[str] = []
        send = s.client._sock_send

        def recording_send(data: bytes) -> int:
            writers.append(threading.current_thread().name)
            return send(data)

        s.client._sock_send = recording_send  # type: ignore[method-assign,assignment]
        with s.writing():
            mid = s.publish("t/flush/event/panic", b'{"seq":1}')
            assert mid is not None
        assert acked.wait(10.0), "no PUBACK for the flushed publish"
        assert acks == [(mid, None)]
        assert writers[0] == threading.current_thread().name, f"written by {writers}"
