"""The Agent as a resource owner: context manager, idempotent close, repr, and the stop order.

The stop order is what keeps a press made during shutdown: the inputs' last
poll runs before the recorder and the outbox close, so the press is on disk
for the next start.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.notify import Notifier
from tests.support.agentproc import write_config
from tests.support.broker import Broker
from tests.support.outboxfile import pending

pytestmark = pytest.mark.broker


def test_agent__context_manager_repr_and_a_press_during_shutdown(tmp_path: Path, broker: Broker, device: str) -> None:
    inputs = [{"name": "panic", "kind": "panic_button", "pin": 17, "debounce_ms": 150}]
    cfg = load_config(write_config(tmp_path, broker.port, device=device, inputs=inputs))
    with Agent(cfg, notifier=Notifier(env={})) as agent:
        assert repr(agent) == f"<Agent main/{device} not started>"
        agent.start()
        assert repr(agent).startswith(f"<Agent main/{device} running pending=")
        assert agent.inputs is not None
        agent.inputs.simulate("panic", active=True)  # 150 ms debounce still running when stop begins
    assert repr(agent) == f"<Agent main/{device} closed>"
    agent.close()  # idempotent
    assert agent.recorder is not None
    panics = [e for e in agent.recorder.recent() if e["type"] == "panic"]
    assert len(panics) == 1, "the press made during shutdown was lost"
    on_disk = set(pending(tmp_path / "outbox.db"))
    assert panics[0]["delivered"] or panics[0]["id"] in on_disk, "recorded, but neither delivered nor on disk"
