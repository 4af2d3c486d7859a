"""What the running daemon keeps in memory: modules it never needs stay unloaded (docs/architecture.md).

Read from outside, the way the bench reads RSS: a real agent process, its
``/proc/PID/maps`` after it connected and recorded presses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.waiting import eventually


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text(encoding="ascii", errors="replace")


@pytest.mark.broker
def test_connecting_by_ascii_host_name__does_not_load_the_idna_codec(
    broker: Broker, agent_proc: AgentFactory, device: str
) -> None:
    agent = agent_proc(broker.port, device=device, mqtt={"host": "localhost"})
    eventually(lambda: agent.status()["link"]["connected"], 20.0, "the agent to connect by host name")
    agent.click()
    agent.wait_recorded(1)
    assert agent.proc is not None
    # encodings.idna imports stringprep, which loads the unicodedata extension: its file shows in the maps
    assert "unicodedata" not in _mapped(agent.proc.pid)


@pytest.mark.broker
def test_connected_agent__has_not_loaded_queue_or_heapq(broker: Broker, agent_proc: AgentFactory, device: str) -> None:
    agent = agent_proc(broker.port, device=device)
    eventually(lambda: agent.status()["link"]["connected"], 20.0, "the agent to connect")
    agent.click()
    agent.wait_recorded(1)
    eventually(
        lambda: agent.status()["status"]["outbox"]["pending"] == 0, 20.0, "the press to be delivered (PUBACK settled)"
    )
    assert agent.proc is not None
    mapped = _mapped(agent.proc.pid)
    assert "_queue." not in mapped  # the queue module's C part
    assert "_heapq." not in mapped
