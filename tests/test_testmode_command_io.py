"""The centre's ``test_mode`` command does no disk I/O on paho's network thread (agent/handlers.py).

A hunt found the state file written (two fsyncs) from ``on_message``, with the
session's socket lock held: a real panic pressed meanwhile reached the centre
1.7 s late behind a 2 s write.  The command now only sets test mode; the
agent's chores thread saves the file and only then sends the reply (a review
found the save first handed to the heartbeat, which may wait behind a slow
commit: a crash meanwhile resumed the test mode the reply had ended).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import statefile
from agent.chores import Chores
from agent.config import load_config
from agent.daemon import Agent
from agent.events import Clock
from agent.notify import Notifier
from agent.statefile import StateFile
from tests.support.agentproc import write_config
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.waiting import eventually

SLOW_S = 1.0  # a state-file write on a busy SD card


@pytest.mark.broker
def test_test_mode_command__a_slow_state_write_does_not_hold_back_an_alarm(
    tmp_path: Path, broker: Broker, central: Central, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = statefile.write_atomic
    slow, writing = threading.Event(), threading.Event()
    writers: list[str] = []
    written: list[float] = []

    def slow_write(path: Path, data: bytes) -> None:
        if slow.is_set():
            writers.append(threading.current_thread().name)
            writing.set()
            time.sleep(SLOW_S)  # the fault injected: the write itself is slow, whoever does it
        real_write(path, data)
        written.append(time.monotonic())

    monkeypatch.setattr(statefile, "write_atomic", slow_write)
    cfg = load_config(write_config(tmp_path, broker.port, device=device))
    with Agent(cfg, clock=Clock(synced=lambda: True), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.inputs is not None
        assert agent.uplink is not None
        uplink = agent.uplink
        eventually(lambda: uplink.state().commands_available, what="the command subscription")
        agent.test_mode.set(30)  # a technician's test window, ended below by the centre
        agent.save_state()
        slow.set()
        central.publish(f"campus/main/{device}/cmd/test_mode", json.dumps({"v": 1, "id": "c-slow-1", "minutes": 0}))
        assert writing.wait(5), "the state file was not written after the command"
        pressed = time.monotonic()  # while the write is under way
        agent.inputs.simulate("panic", active=True)
        msg = central.wait_for(lambda m: m.topic.endswith("/event/panic"), timeout=10)
        agent.inputs.simulate("panic", active=False)
        assert msg.doc["test"] is False
        assert msg.at - pressed < SLOW_S / 2, (
            f"a real panic reached the centre {msg.at - pressed:.2f} s after the press"
        )
        got = eventually(  # from central.all: it may have come before the panic
            lambda: next((m for m in list(central.all) if m.topic.endswith("/reply")), None), what="the reply"
        )
        reply = got.doc
        assert (reply["cmd_id"], reply["ok"], reply["test_mode_until"]) == ("c-slow-1", True, None), reply
        state = StateFile(cfg.outbox.path.with_name("agent-state.json"))
        assert state.load().test_until_mono is None, "the reply came before test mode's end was saved"
        assert got.at >= written[-1], "the reply went before the save had ended"
        assert set(writers) == {"chores"}, writers  # never paho's network thread, nor the heartbeat


def test_chores__run_in_order_on_their_thread_and_close_runs_what_is_queued() -> None:
    ran: list[tuple[int, str]] = []
    gate = threading.Event()
    chores = Chores()

    def note(n: int) -> Callable[[], None]:
        return lambda: ran.append((n, threading.current_thread().name))

    def fail() -> None:
        raise RuntimeError("a chore that fails: logged, and the next one runs")

    def hold() -> None:
        gate.wait(5)

    chores.run_soon(hold)
    for n in range(3):
        chores.run_soon(note(n))
    chores.run_soon(fail)
    chores.run_soon(note(3))
    assert ran == [], "queued behind the first"
    gate.set()
    chores.close()
    assert ran == [(0, "chores"), (1, "chores"), (2, "chores"), (3, "chores")]
    chores.run_soon(note(4))  # after close: at once, on the caller's thread
    assert ran[-1] == (4, threading.current_thread().name)
