"""paho's network thread, idle, waits until the keepalive is due instead of waking every second.

A real mosquitto and a real Session with a 3 s keepalive (below the 5 s the
config takes: the same code, and two keepalives pass in 6 s instead of 10 s).
The thread's select() waits are recorded: while idle they
follow the keepalive, the PINGREQs still go out on time (the broker would
close a session silent for 1.5 keepalives), and close() ends the thread at
once although it may be in a long wait.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from tests.support.broker import Broker
from tests.support.sessions import new_session, opened
from tests.support.waiting import eventually


def test_idle__select_waits_follow_the_keepalive_and_pings_go_out(tmp_path: Path, broker: Broker) -> None:
    s = new_session(tmp_path, broker.port, "idle")
    s.cfg = dataclasses.replace(s.cfg, keepalive_s=3)  # read at connect; max(waits) > 2.0 still tells it from 1 s
    waits: list[float] = []
    pings: list[float] = []
    loop, ping = s.client._loop, s.client._send_pingreq

    def recording_loop(timeout: float = 1.0) -> object:
        waits.append(s.client._keepalive_due())
        return loop(timeout)

    def recording_ping() -> object:
        pings.append(1.0)
        return ping()

    s.client._loop = recording_loop  # type: ignore[method-assign,assignment]
    s.client._send_pingreq = recording_ping  # type: ignore[method-assign,assignment]
    with opened(s):
        eventually(lambda: len(pings) >= 2, 30.0, "two PINGREQs from an idle session")
        assert not s.lost.is_set(), f"the broker dropped the idle session: {s.lost_reason}"
        assert max(waits) > 2.0, f"paho's thread still wakes every second: waits {waits[:20]}"
        thread = s.client._thread
        assert thread is not None
    assert not thread.is_alive()


def test_idle__close_wakes_a_thread_in_a_long_wait(tmp_path: Path, broker: Broker) -> None:
    with opened(new_session(tmp_path, broker.port, "idle2", keepalive_s=60)) as s:
        s.lost.set()  # as if the link were gone: close() sends no DISCONNECT that would wake the thread
        thread = s.client._thread
        assert isinstance(thread, threading.Thread)
        closer = threading.Thread(target=s.close)
        closer.start()
        closer.join(5.0)  # a bound for a hang, not a speed figure: the wait without the nudge is 10 s
        assert not closer.is_alive(), "close() waited for paho's select() to time out"
    assert not thread.is_alive()
