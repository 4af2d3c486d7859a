"""Shared fixtures: a real mosquitto per session, mock pins, fake time, a throwaway outbox, configs, schemas."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema.protocols import Validator

from agent.config.model import MqttConfig
from agent.outbox import Outbox
from tests.support.agentproc import AgentFactory, AgentProc, remove_socket_dirs, unique_id, write_config
from tests.support.broker import Broker
from tests.support.clocks import FakeTime
from tests.support.contract import Validate, load_validators
from tests.support.mqtt import Central
from tests.support.uplinkrig import Rig, RigFactory

# Test rigs here often run as root; `campus-agent run` refuses root without this (tests/security/ unsets it).
os.environ.setdefault("CAMPUS_AGENT_ALLOW_ROOT", "1")


@pytest.fixture(scope="session", autouse=True)
def _socket_dirs() -> Iterator[None]:
    yield
    remove_socket_dirs()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One mosquitto for the whole session; tests keep apart by unique device ids."""
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker this test may stop and restart (same port)."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def device() -> str:
    return unique_id("gate")


@pytest.fixture
def central(broker: Broker, device: str) -> Iterator[Central]:
    c = Central(broker.port, topics=(f"campus/+/{device}/#",))
    yield c
    c.close()


@pytest.fixture
def mock_factory() -> Iterator[Any]:
    from gpiozero.pins.mock import MockFactory

    f = MockFactory()
    try:
        yield f
    finally:
        f.reset()
        f.close()


@pytest.fixture
def fake_time() -> FakeTime:
    """Time at 1000 s monotonic that moves only when the test calls ``advance`` (``.clock()`` for a Clock)."""
    return FakeTime()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    """An empty outbox in ``tmp_path`` (site ``main``, device ``gate-1``), closed after the test."""
    with Outbox(tmp_path / "outbox.db", site="main", device="gate-1") as ob:
        yield ob


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[RigFactory]:
    """Factory: rig_factory(mqtt_cfg(...), device) → an Outbox + Uplink pair, closed after the test."""
    rigs: list[Rig] = []

    def make(cfg: MqttConfig, device: str) -> Rig:
        r = Rig(tmp_path, cfg, device)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


@pytest.fixture(scope="session")
def validators() -> dict[str, Validator]:
    return load_validators()


@pytest.fixture
def validate(validators: dict[str, Validator]) -> Validate:
    def check(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
        errors = sorted(validators[kind].iter_errors(doc), key=str)
        assert not errors, f"{kind} document breaks the contract: {[e.message for e in errors]}\n{doc}"
        return doc

    return check


@pytest.fixture
def agent_proc(tmp_path: Path) -> Iterator[AgentFactory]:
    """Factory: agent_proc(port, device=..., **config) → a started AgentProc, cleaned up after."""
    procs: list[AgentProc] = []

    def make(port: int, *, device: str, start: bool = True, workdir: Path | None = None, **extra: Any) -> AgentProc:
        cfg = write_config(workdir or tmp_path / device, port, device=device, **extra)
        p = AgentProc(cfg)
        procs.append(p)
        return p.start() if start else p

    yield make
    for p in procs:
        p.cleanup()
