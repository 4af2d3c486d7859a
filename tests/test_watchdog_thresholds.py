"""The watchdog's per-thread allowances: only the sender waits on the network (agent/daemon.py, ``stalled``).

A stuck inputs thread records no press; the unit's ``WatchdogSec=30s`` must
restart the agent whatever ``mqtt.connect_timeout_s`` says (it may be 120 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.notify import Notifier
from tests.support.agentproc import write_config
from tests.support.broker import free_port
from tests.support.clocks import FakeTime

_OTHERS = ("inputs", "indicators", "cameras", "heartbeat")


class _Part:
    """A watched part whose thread last showed progress at ``progress`` (monotonic seconds)."""

    def __init__(self, progress: float) -> None:
        self.progress = progress


def _agent(tmp_path: Path, ft: FakeTime, connect_timeout_s: float) -> Agent:
    cfg = load_config(write_config(tmp_path, free_port(), device="wd-3", mqtt={"connect_timeout_s": connect_timeout_s}))
    agent = Agent(cfg, clock=ft.clock(), notifier=Notifier(env={}))
    agent.uplink = _Part(ft.t)  # type: ignore[assignment]
    agent.inputs = _Part(ft.t)  # type: ignore[assignment]
    agent.indicators = _Part(ft.t)  # type: ignore[assignment]
    agent.cameras = _Part(ft.t)
    return agent


def _keep_alive(agent: Agent, ft: FakeTime, *, but: str) -> None:
    """Every part but ``but`` has just shown progress."""
    parts: dict[str, Any] = {
        "uplink-sender": agent.uplink,
        "inputs": agent.inputs,
        "indicators": agent.indicators,
        "cameras": agent.cameras,
        "heartbeat": agent.heartbeat,
    }
    for name, part in parts.items():
        if name != but:
            part.progress = ft.t


@pytest.mark.parametrize("connect_timeout_s", [10, 60, 120])
@pytest.mark.parametrize("name", _OTHERS)
def test_stalled__a_thread_other_than_the_sender_is_held_to_20_s(
    tmp_path: Path, name: str, connect_timeout_s: float
) -> None:
    ft = FakeTime()
    agent = _agent(tmp_path, ft, connect_timeout_s)
    ft.advance(19.5)
    _keep_alive(agent, ft, but=name)
    assert agent.stalled() == []  # the 10 s idle wake-ups, with room to spare
    ft.advance(1.0)
    _keep_alive(agent, ft, but=name)
    assert agent.stalled() == [name]


@pytest.mark.parametrize(("connect_timeout_s", "allowance_s"), [(5, 20.0), (10, 25.0), (60, 125.0), (120, 245.0)])
def test_stalled__the_sender_keeps_its_connect_allowance(
    tmp_path: Path, connect_timeout_s: float, allowance_s: float
) -> None:
    ft = FakeTime()
    agent = _agent(tmp_path, ft, connect_timeout_s)
    ft.advance(allowance_s - 0.5)  # a connect attempt to an unreachable broker, twice
    _keep_alive(agent, ft, but="uplink-sender")
    assert agent.stalled() == []
    ft.advance(1.0)
    _keep_alive(agent, ft, but="uplink-sender")
    assert agent.stalled() == ["uplink-sender"]


def test_stalled__a_lower_stall_after_s_holds_every_thread_to_it(tmp_path: Path) -> None:
    """Tests shorten ``stall_after_s`` (tests/test_notify.py): no thread then gets longer than that."""
    ft = FakeTime()
    agent = _agent(tmp_path, ft, 60)
    agent.stall_after_s = 15.0
    ft.advance(16.0)
    _keep_alive(agent, ft, but="inputs")
    agent.uplink.progress = ft.t - 16.0  # type: ignore[union-attr]
    assert agent.stalled() == ["uplink-sender", "inputs"]
