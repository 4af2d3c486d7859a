"""The centre's ack and the LED after a restart (agent/recorder_known.py, agent/carryover.py, agent/statefile.py).

A hunt found two gaps: the state file's alarms came from the 50-event recent
list, so fifty routine events (a flapping camera) after an alarm made its ack
"unknown" after a restart; and a test press still pending at a restart was
carried as delivered (only real alarms were looked up in the outbox), so the
LED showed ``idle`` instead of ``sending`` and never ``sent``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import load_config
from agent.config.model import Config
from agent.daemon import Agent
from agent.events import Clock, Event, EventType
from agent.notify import Notifier
from agent.outbox import Outbox
from agent.recorder import Item, Recorder
from agent.statefile import State, StateFile
from tests.support.agentproc import write_config
from tests.support.broker import free_port
from tests.support.clocks import FakeTime, synced_clock

OUTPUTS = {"ack_led": {"pin": 22}, "buzzer": {"pin": 23}}
CAMERA = {"detail": "x", "kind": "rtsp", "failures": 3}


def _flap(rec: Recorder, clock: Clock, n: int) -> None:
    """``n`` camera faults and restorations: routine events that fill the recent list."""
    for i in range(n):
        kind = EventType.CAMERA_FAULT if i % 2 == 0 else EventType.CAMERA_RESTORED
        rec.record(kind, "cam1", clock.stamp(), CAMERA)


def test_recorder__an_alarm_followed_by_routine_events_stays_known_and_latest(outbox: Outbox) -> None:
    clock = synced_clock()
    rec = Recorder(outbox, clock=clock, site="main", device="gate-1")
    try:
        rec.record(EventType.PANIC, "panic", clock.stamp(), {"pin": 17, "contact": "normally_open"})
        panic = rec.recent()[0]
        _flap(rec, clock, 60)
        assert panic["id"] not in [e["id"] for e in rec.recent()], "pushed out of the recent list"
        assert rec.knows(panic["id"]), "the centre's ack in this run"
        assert rec.latest_alarms() == [panic["id"]]
        assert rec.latest_alarm_seqs() == [(panic["id"], panic["seq"])]
    finally:
        rec.close()


def test_recorder__the_alarm_record_is_bounded_newest_first(outbox: Outbox) -> None:
    clock = synced_clock()
    rec = Recorder(outbox, clock=clock, site="main", device="gate-1")
    try:
        rec.remember(["old-1", "old-2"], {"old-2": 5})
        presses: list[Item] = [(EventType.PANIC, "panic", clock.stamp(), {"pin": 17}) for _ in range(200)]
        rec.record_many(presses)
        ids = [e["id"] for e in rec.recent()]  # newest first, the last 50
        assert rec.latest_alarms(3) == ids[:3]
        assert len(rec.latest_alarms(1000)) == 128 + 2, "this run's record is bounded; then the earlier run's"
        assert rec.latest_alarms(1000)[-2:] == ["old-2", "old-1"]
        assert rec.latest_alarm_seqs(1000)[-1] == ("old-2", 5)
    finally:
        rec.close()


def test_statefile__alarm_seqs_round_trip(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "agent-state.json")
    state = State("b", 9, alarms=("a" * 32, "b" * 32), alarm_seqs=(("a" * 32, 9), ("b" * 32, 4)))
    sf.save(state)
    assert StateFile(sf.path).load() == state


def test_statefile__an_older_file_without_alarm_seqs_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent-state.json"
    path.write_text(json.dumps({"boot_id": "b", "last_seq": 3, "alarms": ["a" * 32]}), encoding="utf-8")
    assert StateFile(path).load() == State("b", 3, alarms=("a" * 32,))


@pytest.mark.parametrize(
    "value",
    [None, [], "x", {"a": "1"}, {"a": True}, {"a": -1}, {"a": 2**63}, {"a": 1.5}, {"x" * 65: 1}],
)
def test_statefile__damaged_alarm_seqs_read_as_none(tmp_path: Path, value: object) -> None:
    path = tmp_path / "agent-state.json"
    path.write_text(json.dumps({"boot_id": "b", "last_seq": 3, "alarm_seqs": value}), encoding="utf-8")
    assert StateFile(path).load() == State("b", 3)


def test_statefile__alarm_seqs_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "agent-state.json"
    path.write_text(json.dumps({"last_seq": 3, "alarm_seqs": {f"{i:032x}": i for i in range(1000)}}), encoding="utf-8")
    assert len(StateFile(path).load().alarm_seqs) == 32


def test_restart__a_delivered_alarm_followed_by_50_routine_events_is_still_acknowledgeable(tmp_path: Path) -> None:
    ft = FakeTime()
    cfg = load_config(write_config(tmp_path, free_port(), device="ra-1", outputs=OUTPUTS))
    clock = ft.clock()
    with Agent(cfg, clock=clock, notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.recorder is not None
        assert agent.outbox is not None
        agent.recorder.record(EventType.PANIC, "panic", clock.stamp(), {"pin": 17, "contact": "normally_open"})
        panic = agent.recorder.recent()[0]
        agent.outbox.ack([panic["seq"]])  # the broker's PUBACK: delivered, not yet acknowledged by the centre
        _flap(agent.recorder, clock, 50)
    ft.advance(30)  # the watchdog restarts the agent
    with Agent(cfg, clock=ft.clock(), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.indicators is not None
        assert agent.handlers._cmd_ack(panic["id"]), "the centre's ack of this device's alarm is refused as unknown"
        assert agent.indicators.patterns()["ack_led"]["pattern"] == "acknowledged"


def _pending_test_press(cfg: Config, ft: FakeTime) -> tuple[str, int]:
    """A run that stopped with a test press pending (the link was down); the state file lists it with its seq."""
    with Outbox(cfg.outbox.path, site=cfg.device.site, device=cfg.device.id, intake=False) as ob:
        press = Event.create(ft.clock(), EventType.PANIC, "panic", test=True, data={"pin": 17})
        seq = ob.put(press)
        top = ob.top_seq()
    state = State("b-old", top, alarms=(press.id,), alarm_seqs=((press.id, seq),))
    StateFile(cfg.outbox.path.with_name("agent-state.json")).save(state)
    return press.id, seq


def test_restart__a_pending_test_press_shows_sending_then_sent(tmp_path: Path) -> None:
    ft = FakeTime()
    cfg = load_config(write_config(tmp_path, free_port(), device="ra-2", outputs=OUTPUTS))
    press, seq = _pending_test_press(cfg, ft)
    ft.advance(5)
    with Agent(cfg, clock=ft.clock(), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.indicators is not None
        assert agent.recorder is not None
        before = agent.indicators.patterns()["ack_led"]["pattern"]
        agent.indicators.alarm_delivered(press)  # the PUBACK once the link is back
        assert (before, agent.indicators.patterns()["ack_led"]["pattern"]) == ("sending", "sent")
        assert (press, seq) in agent.recorder.latest_alarm_seqs(), "found again after yet another restart"


def test_restart__a_test_press_pending_at_stop_shows_sending_then_sent(tmp_path: Path) -> None:
    ft = FakeTime()
    cfg = load_config(write_config(tmp_path, free_port(), device="ra-3", outputs=OUTPUTS))
    clock = ft.clock()
    with Agent(cfg, clock=clock, notifier=Notifier(env={})) as agent:
        agent.start()
        agent.test_mode.set(30)
        assert agent.recorder is not None
        agent.recorder.record(EventType.PANIC, "panic", clock.stamp(), {"pin": 17, "contact": "normally_open"})
        press = agent.recorder.recent()[0]
        assert press["test"] is True
    ft.advance(5)
    with Agent(cfg, clock=ft.clock(), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.indicators is not None
        assert agent.outbox is not None
        assert agent.outbox.get(press["seq"]) is not None, "still pending"
        before = agent.indicators.patterns()["ack_led"]["pattern"]
        agent.indicators.alarm_delivered(press["id"])
        assert (before, agent.indicators.patterns()["ack_led"]["pattern"]) == ("sending", "sent")
