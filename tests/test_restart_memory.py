"""What a restart of the agent must not forget: alarms the centre may still acknowledge, and when a button was tested.

A hunt found both lost: an alarm recorded before a restart (watchdog, crash)
and delivered after it could never be acknowledged ("this agent has no record
of it"; the monitor offered it again and again) and the presser's LED never
showed it go out; and `inputs.*.last_test` read null after every restart.
agent-state.json now keeps the latest alarm ids and each input's last event
and test; the alarms still pending show `sending` again at start.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.model import Config
from agent.daemon import Agent
from agent.events import Clock
from agent.notify import Notifier
from agent.statefile import State, StateFile
from tests.support.agentproc import AgentProc, unique_id, write_config
from tests.support.broker import Broker, free_port
from tests.support.mqtt import Central
from tests.support.waiting import eventually

OUTPUTS = {"ack_led": {"pin": 22}, "buzzer": {"pin": 23}}


def press_and_stop(cfg: Config, clock: Clock) -> None:
    """A run of the agent in which the panic button is pressed and nothing is delivered (no broker)."""
    with Agent(cfg, clock=clock, notifier=Notifier(env={})) as first:
        first.start()
        assert first.inputs is not None
        first.inputs.simulate("panic", active=True)
        first.inputs.simulate("panic", active=False)
        eventually(lambda: first.outbox is not None and first.outbox.pending() >= 2, what="the press pending")


@pytest.mark.broker
def test_restart__an_alarm_pressed_before_it_is_acknowledged_after_it(tmp_path: Path, broker: Broker) -> None:
    device = unique_id("rst")
    agent = AgentProc(write_config(tmp_path, free_port(), device=device, outputs=OUTPUTS)).start()
    try:
        agent.click()
        pressed = agent.wait_recorded(1)[0]
        agent.kill()  # the press is safe in the outbox; the broker was never reachable
        central = Central(broker.port, topics=(f"campus/main/{device}/#",))
        try:
            write_config(tmp_path, broker.port, device=device, outputs=OUTPUTS, control={"socket": str(agent.socket)})
            agent.start()
            ev = central.wait_for(lambda m: m.topic.endswith("/event/panic")).doc
            assert ev["id"] == pressed["id"]
            cmd_id = f"c-{uuid.uuid4().hex[:8]}"
            central.publish(f"campus/main/{device}/cmd/ack", json.dumps({"v": 1, "id": cmd_id, "event_id": ev["id"]}))
            reply = central.wait_for(lambda m: m.topic.endswith("/reply") and m.doc.get("cmd_id") == cmd_id).doc
            assert reply["ok"] is True, reply
            eventually(
                lambda: agent.status()["status"]["outputs"]["ack_led"]["pattern"] == "acknowledged",
                what="the LED to show the centre's ack",
            )
        finally:
            central.close()
    finally:
        agent.cleanup()


def test_restart__the_last_test_of_a_button_is_still_in_status(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, free_port(), device="gate-tested"))
    clock = Clock(synced=lambda: True, boot_id="b")
    with Agent(cfg, clock=clock, notifier=Notifier(env={})) as first:
        first.start()
        first.handlers._set_test_mode(10, " (technician)")
        assert first.inputs is not None
        first.inputs.simulate("panic", active=True)
        first.inputs.simulate("panic", active=False)
        tested = eventually(lambda: first.status_doc()["inputs"]["panic"]["last_test"], what="the test press noted")
        first.handlers._set_test_mode(0, " (technician)")
        alarm = first.recorder.recent()[0]["id"] if first.recorder is not None else ""
    with Agent(cfg, clock=clock, notifier=Notifier(env={})) as second:
        second.start()
        after = second.status_doc()["inputs"]["panic"]
        assert after["last_test"] == tested
        assert after["last_event"] == tested
        assert second.recorder is not None
        assert second.recorder.knows(alarm), "the centre may still acknowledge it"


def test_restart__the_state_file_takes_no_junk_for_alarms_or_inputs(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "agent-state.json")
    sf.save(State("b", 3, alarms=("a" * 32,), inputs=(("panic", "2026-11-30T00:00:00.000Z", None),)))
    assert StateFile(sf.path).load().inputs == (("panic", "2026-11-30T00:00:00.000Z", None),)
    sf.path.write_text(
        json.dumps(
            {
                "boot_id": "b",
                "last_seq": 3,
                "alarms": [1, "x" * 500, "ok"],
                "inputs": {"p": {"last_test": 7, "last_event": "yesterday"}},  # not the status's ts form
            }
        )
    )
    got = sf.load()
    assert got.alarms == ("ok",)
    assert got.inputs == (("p", None, None),)
    sf.path.write_text(json.dumps({"boot_id": "b", "last_seq": 3, "alarms": "no", "inputs": ["no"]}))
    assert (sf.load().alarms, sf.load().inputs) == ((), ())


def test_restart__a_press_at_start_is_newer_than_the_alarms_carried_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The carried alarms were handed to the indicators after the inputs were armed: a press made then
    ranked older than them, and its acknowledgement never showed on the LED."""
    from agent.indicators import Indicators

    cfg = load_config(write_config(tmp_path, free_port(), device="gate-order", outputs=OUTPUTS))
    clock = Clock(synced=lambda: True, boot_id="b")
    press_and_stop(cfg, clock)
    second = Agent(cfg, clock=clock, notifier=Notifier(env={}))
    start = Indicators.start

    def start_then_press(self: Indicators, *, start_thread: bool = True) -> None:
        start(self, start_thread=start_thread)
        assert second.inputs is not None
        known = len(self._alarms)
        second.inputs.simulate("panic", active=True)  # pressed while the agent is still starting
        second.inputs.simulate("panic", active=False)
        eventually(lambda: len(self._alarms) > known, what="the press known to the indicators")

    monkeypatch.setattr(Indicators, "start", start_then_press)
    with second:
        second.start()
        assert second.recorder is not None
        assert second.indicators is not None
        indicators = second.indicators
        fresh = eventually(
            lambda: next((e["id"] for e in second.recorder.recent() if e["type"] == "panic"), None),  # type: ignore[union-attr]
            what="the press recorded",
        )
        eventually(lambda: fresh in indicators._alarms, what="the press known to the indicators")
        indicators.acknowledged(fresh)
        eventually(lambda: indicators.patterns()["ack_led"]["pattern"] == "acknowledged", what="the ack shown")


@pytest.mark.broker
def test_restart__only_this_runs_events_are_timed_across_its_clock_steps(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.transmission import Transmission

    cfg = load_config(write_config(tmp_path, free_port(), device="gate-runs"))
    clock = Clock(synced=lambda: True, boot_id="b")
    press_and_stop(cfg, clock)
    seen: list[bool] = []
    delivered = Transmission.delivered

    def noting(self: Transmission, recorded_wall: float, *, this_run: bool = True) -> None:
        seen.append(this_run)
        delivered(self, recorded_wall, this_run=this_run)

    monkeypatch.setattr(Transmission, "delivered", noting)
    cfg = load_config(write_config(tmp_path, broker.port, device="gate-runs"))
    with Agent(cfg, clock=clock, notifier=Notifier(env={})) as second:
        second.start()
        eventually(lambda: len(seen) >= 3, what="the three events delivered")
    assert sorted(seen) == [False, False, True], "two of the last run (agent_started, the press), one of this"
