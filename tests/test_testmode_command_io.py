"""The centre's ``test_mode`` command does no disk I/O on paho's network thread (agent/handlers.py).

A hunt found the state file written (two fsyncs) from ``on_message``, with the
session's socket lock held: a real panic pressed meanwhile reached the centre
1.7 s late behind a 2 s write.  The command now only sets test mode; the
heartbeat's thread saves the file, and the reply claims nothing about it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from agent import statefile
from agent.config import load_config
from agent.daemon import Agent
from agent.events import Clock
from agent.health import Heartbeat
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

    def slow_write(path: Path, data: bytes) -> None:
        if slow.is_set():
            writers.append(threading.current_thread().name)
            writing.set()
            time.sleep(SLOW_S)  # the fault injected: the write itself is slow, whoever does it
        real_write(path, data)

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
        reply = eventually(  # from central.all: it may have come before the panic
            lambda: next((m.doc for m in list(central.all) if m.topic.endswith("/reply")), None), what="the reply"
        )
        assert (reply["cmd_id"], reply["ok"], reply["test_mode_until"]) == ("c-slow-1", True, None), reply
        state = StateFile(cfg.outbox.path.with_name("agent-state.json"))
        eventually(lambda: state.load().test_until_mono is None, timeout=3 * SLOW_S, what="test mode's end saved")
        assert set(writers) == {"heartbeat"}, writers  # never paho's network thread


def test_heartbeat__run_soon_runs_a_task_once_on_its_thread_even_if_asked_before_start() -> None:
    ran: list[str] = []
    done = threading.Event()

    def task() -> None:
        ran.append(threading.current_thread().name)
        done.set()

    beat = Heartbeat(interval_s=60.0, publish=lambda: None, mono=time.monotonic)
    beat.run_soon(task)
    beat.run_soon(task)  # asked twice before it ran: run once
    with beat:
        beat.start()
        assert done.wait(5)
        done.clear()
        beat.run_soon(task)
        assert done.wait(5)
    assert ran == ["heartbeat", "heartbeat"]
