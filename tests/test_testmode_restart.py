"""Test mode survives a restart of the agent, so a technician's test press is never sent as a real alarm.

A hunt found it lost: test mode on for 30 minutes, the agent restarted
(watchdog, crash, power blip), and the next test press reached the centre
with ``"test": false``.  Its end is now kept in agent-state.json on both
clocks: the monotonic one carries on within a boot, the wall clock after a
reboot only while it is synchronised.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.events import Clock
from agent.notify import Notifier
from agent.statefile import State, StateFile
from tests.support.agentproc import AgentFactory, run_cli, write_config
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def test_testmode__a_restart_within_the_window_keeps_it(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str
) -> None:
    agent = agent_proc(broker.port, device=device)
    r = run_cli("test-mode", "on", "--minutes", "30", "-c", str(agent.config))
    assert r.returncode == 0, r.stderr
    agent.kill()  # what systemd restarts after a crash or the watchdog
    agent.start()
    eventually(lambda: agent.status()["link"]["connected"], what="the agent to reconnect")
    agent.click()
    doc = central.wait_for(lambda m: m.topic.endswith("/event/panic")).doc
    assert doc["test"] is True, "the technician's press in the test window went out as a real alarm"
    assert run_cli("test-mode", "off", "-c", str(agent.config)).returncode == 0
    agent.kill()
    agent.start()
    assert agent.status()["status"]["test_mode_until"] is None, "ended before the restart: stays ended"


@pytest.mark.parametrize("synced", [True, False])
def test_testmode__after_a_reboot_only_a_synchronised_clock_resumes_it(
    tmp_path: Path, broker: Broker, device: str, synced: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(write_config(tmp_path, broker.port, device=device))
    until = time.time() + 600
    StateFile(tmp_path / "agent-state.json").save(State("the-boot-before", 5, until, 123.0))
    with Agent(cfg, clock=Clock(synced=lambda: synced, boot_id="this-boot"), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.test_mode.active() is synced
        if synced:
            assert "test mode resumed after the restart" in caplog.text
            left = (agent.test_mode.ends()[0] or 0) - time.time()
            assert 590 < left <= 600
        else:
            assert "not resumed" in caplog.text
            assert "presses now go out as REAL alarms" in caplog.text


def test_testmode__the_state_file_keeps_both_ends_and_ignores_junk(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "agent-state.json")
    sf.save(State("b", 7, 1.8e9, 4242.5))
    assert StateFile(sf.path).load() == State("b", 7, 1.8e9, 4242.5)
    sf.path.write_text(json.dumps({"boot_id": "b", "last_seq": 7, "test_until": "soon", "test_until_mono": True}))
    assert sf.load() == State("b", 7, None, None)
    sf.path.write_text('{"boot_id": "b", "last_seq": 7, "test_until": NaN, "test_until_mono": Infinity}')
    assert sf.load() == State("b", 7, None, None)


def test_testmode__an_end_set_on_an_unsynchronised_clock_is_not_kept_for_after_a_reboot() -> None:
    """Set for 30 minutes while the clock read an hour ahead: after a reboot with NTP it ran 90 minutes."""
    from agent.health import TestMode

    synced = [False]
    mode = TestMode(Clock(synced=lambda: synced[0], boot_id="b", sync_ttl_s=0))
    mode.set(30)
    wall, mono = mode.ends()
    assert wall is None, "a wall-clock end from an unsynchronised clock is not saved"
    assert mono is not None, "the monotonic one serves a restart within this boot"
    synced[0] = True
    mode.set(30)
    assert mode.ends()[0] is not None


def test_testmode__after_a_reboot_an_end_without_a_trusted_wall_time_is_not_resumed(
    tmp_path: Path, broker: Broker, device: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(write_config(tmp_path, broker.port, device=device))
    StateFile(tmp_path / "agent-state.json").save(State("the-boot-before", 5, None, 123.0))
    with Agent(cfg, clock=Clock(synced=lambda: True, boot_id="this-boot"), notifier=Notifier(env={})) as agent:
        agent.start()
        assert not agent.test_mode.active()
        assert "set while the clock was not synchronised" in caplog.text
