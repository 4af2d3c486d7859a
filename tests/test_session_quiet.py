"""A publish written by the publishing thread does not wake paho's network thread; one it could not write does.

A real mosquitto and a real Session.  paho wakes its network thread by writing
a byte to a socket pair after queueing a packet; the wake-up socket is wrapped
here so each byte is counted with the thread that wrote it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.session import Session
from tests.support.broker import Broker
from tests.support.sessions import new_session, opened


class CountingSocket:
    """The wake-up socket, counting what is sent through it."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.sent: list[str] = []

    def send(self, data: bytes) -> int:
        self.sent.append(threading.current_thread().name)
        return self.real.send(data)

    def close(self) -> None:
        self.real.close()


@pytest.fixture
def session(tmp_path: Path, broker: Broker) -> Iterator[tuple[Session, list[int], threading.Event]]:
    acks: list[int] = []
    acked = threading.Event()

    def on_ack(mid: int, _refusal: str | None) -> None:
        acks.append(mid)
        acked.set()

    with opened(new_session(tmp_path, broker.port, "quiet", on_ack=on_ack)) as s:
        yield s, acks, acked


def _count_wakes(s: Session) -> CountingSocket:
    real = s.client._wake_w
    assert real is not None
    counting = CountingSocket(real)
    s.client._wake_w = counting  # type: ignore[assignment]
    return counting


def test_quiet__a_publish_written_by_its_own_thread_wakes_nobody(
    session: tuple[Session, list[int], threading.Event],
) -> None:
    s, acks, acked = session
    wakes = _count_wakes(s)
    with s.writing():
        mid = s.publish("t/quiet/event/panic", b'{"seq":1}')
    assert acked.wait(10.0), "no PUBACK"
    assert acks == [mid]
    assert wakes.sent == [], f"paho's thread was woken by {wakes.sent}"


def test_quiet__a_publish_outside_writing_still_wakes_the_network_thread(
    session: tuple[Session, list[int], threading.Event],
) -> None:
    s, acks, acked = session
    wakes = _count_wakes(s)
    mid = s.publish("t/quiet/event/panic", b'{"seq":2}')
    assert acked.wait(10.0), "no PUBACK"
    assert acks == [mid]
    assert wakes.sent == [threading.current_thread().name]


def test_quiet__a_packet_the_thread_could_not_write_is_handed_to_the_network_thread(
    session: tuple[Session, list[int], threading.Event],
) -> None:
    s, acks, acked = session
    wakes = _count_wakes(s)
    send = s.client._sock_send

    def full(_data: bytes) -> int:
        raise BlockingIOError  # the socket's buffer is full: paho keeps the packet queued

    s.client._sock_send = full  # type: ignore[method-assign,assignment]
    try:
        with s.writing():
            mid = s.publish("t/quiet/event/panic", b'{"seq":3}')
    finally:
        s.client._sock_send = send  # type: ignore[method-assign]
    assert wakes.sent == [threading.current_thread().name], "the unwritten packet did not wake paho's thread"
    assert acked.wait(10.0), "the packet left queued was never written"
    assert acks == [mid]
