"""What the LED and buzzer show after a restart (agent/carryover.py; agent/indicators.py).

A hunt found two gaps: only the OLDEST 64 pending alarms were handed to the
indicators (after a long outage the newest presses, the ones the presser
waits on, never showed their ack), and an alarm delivered just before the
restart but not yet acknowledged never showed the centre's later ack.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.carryover import in_press_order, newest_alarms
from agent.config import load_config
from agent.config.model import Config
from agent.daemon import Agent
from agent.events import Event, EventType
from agent.indicators import Indicators
from agent.notify import Notifier
from agent.outbox import Outbox
from agent.outbox_rows import OutboxRow
from agent.statefile import State, StateFile
from tests.support.agentproc import write_config
from tests.support.broker import free_port
from tests.support.clocks import FakeTime

OUTPUTS = {"ack_led": {"pin": 22}, "buzzer": {"pin": 23}}


def _outbox(cfg: Config) -> Outbox:
    return Outbox(cfg.outbox.path, site=cfg.device.site, device=cfg.device.id, intake=False)


def _events(ft: FakeTime, kinds: str) -> list[Event]:
    """One event per letter: ``a`` a real alarm, ``t`` a test press, ``r`` routine (an input fault)."""
    clock = ft.clock()
    made = {
        "a": lambda: Event.create(clock, EventType.PANIC, "panic", data={"pin": 17}),
        "t": lambda: Event.create(clock, EventType.PANIC, "panic", test=True, data={"pin": 17}),
        "r": lambda: Event.create(clock, EventType.INPUT_FAULT, "panic", data={"pin": 17}),
    }
    return [made[k]() for k in kinds]


@pytest.mark.parametrize(
    "kinds",
    [
        "",
        "a" * 3,
        "a" * 4,
        "a" * 5 + "r" * 40,
        "r" * 30 + "a" * 9,
        "ar" * 20 + "t" * 7,
        "a" * 9 + "r" * 300 + "a",
        "rrtarrrtaaa" * 13,
    ],
)
def test_newest_alarms__the_newest_pending_real_alarms_oldest_first(tmp_path: Path, kinds: str) -> None:
    ft = FakeTime()
    cfg = load_config(write_config(tmp_path, free_port(), device="carry-1"))
    with _outbox(cfg) as ob:
        if kinds:
            ob.put_many(_events(ft, kinds))
        every = ob.next_batch(0, len(kinds) + 1, urgent=True)
        assert [r.seq for r in newest_alarms(ob, 4)] == [r.seq for r in every[-4:]]


def test_restart__the_newest_pending_alarms_are_shown_and_their_ack_too(tmp_path: Path) -> None:
    ft = FakeTime()
    cfg = load_config(write_config(tmp_path, free_port(), device="carry-2", outputs=OUTPUTS))
    with _outbox(cfg) as ob:
        events = _events(ft, "ar" * 70)  # a long outage: 70 presses, each with an input fault
        ob.put_many(events)
    pressed = events[::2]
    with Agent(cfg, clock=ft.clock(), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.indicators is not None
        assert not agent.indicators.acknowledged(pressed[5].id)  # beyond the 64 newest: not shown
        assert agent.indicators.patterns()["ack_led"]["pattern"] == "sending"
        assert agent.indicators.acknowledged(pressed[-1].id)
        assert agent.indicators.patterns()["ack_led"]["pattern"] == "acknowledged"


def _delivered_before_restart(tmp_path: Path, ft: FakeTime, *, silent: bool = False) -> tuple[Config, str]:
    """A run that delivered an alarm (its row gone from the outbox) the centre had not acknowledged yet."""
    inputs = [{"name": "panic", "kind": "panic_button", "pin": 17, "debounce_ms": 0, "silent": silent}]
    cfg = load_config(write_config(tmp_path, free_port(), device="carry-3", outputs=OUTPUTS, inputs=inputs))
    with _outbox(cfg) as ob:
        (alarm,) = _events(ft, "a")
        ob.ack([ob.put(alarm)])
        top = ob.top_seq()
    StateFile(cfg.outbox.path.with_name("agent-state.json")).save(State("b-old", top, alarms=(alarm.id,)))
    return cfg, alarm.id


def test_restart__an_alarm_delivered_before_it_shows_the_centres_ack_after_it(tmp_path: Path) -> None:
    ft = FakeTime()
    cfg, alarm = _delivered_before_restart(tmp_path, ft)
    ft.advance(3 * 3600)  # hours later: nothing starts blinking or chirping for it
    with Agent(cfg, clock=ft.clock(), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.indicators is not None
        assert agent.indicators.patterns() == {"ack_led": {"pattern": "idle"}, "buzzer": {"pattern": "idle"}}
        assert agent.indicators.acknowledged(alarm)
        assert agent.indicators.patterns() == {
            "ack_led": {"pattern": "acknowledged"},
            "buzzer": {"pattern": "acknowledged"},
        }


def test_restart__a_carried_alarm_of_a_silent_input_never_sounds(tmp_path: Path) -> None:
    """Its input is not kept in the state file: with a silent input configured, none of them sounds."""
    ft = FakeTime()
    cfg, alarm = _delivered_before_restart(tmp_path, ft, silent=True)
    with Agent(cfg, clock=ft.clock(), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.indicators is not None
        assert agent.indicators.acknowledged(alarm)
        assert agent.indicators.patterns() == {"ack_led": {"pattern": "acknowledged"}, "buzzer": {"pattern": "idle"}}


def test_indicators__a_carried_alarm_is_delivered_with_its_hold_over(mock_factory: object) -> None:
    ft = FakeTime()
    from agent.config.model import OutputConfig, OutputsConfig

    cfg = OutputsConfig(ack_led=OutputConfig(22, True), buzzer=None, ack_hold_s=30, fault_after_s=60)
    ind = Indicators(cfg, pin_factory=mock_factory, mono=ft)
    ind.alarm_carried("a" * 32, silent=False)
    ind.alarm_carried("a" * 32, silent=False)  # once only
    assert ind.patterns()["ack_led"]["pattern"] == "idle"
    ind.alarm_recorded("b" * 32, silent=False)  # a press after the restart ranks newer
    ind.acknowledged("a" * 32)
    assert ind.patterns()["ack_led"]["pattern"] == "sending"


def test_restart__a_delivered_alarm_newer_than_a_pending_one_stays_the_newest(tmp_path: Path) -> None:
    """A review found every delivered alarm ranked older than every pending one: the ack of the newest did not show."""
    ft = FakeTime()
    cfg = load_config(write_config(tmp_path, free_port(), device="carry-x", outputs=OUTPUTS))
    clock = ft.clock()
    with Outbox(cfg.outbox.path, site=cfg.device.site, device=cfg.device.id, intake=False) as ob:
        a = Event.create(clock, EventType.PANIC, "panic", data={"pin": 17})
        ft.advance(5)
        b = Event.create(clock, EventType.PANIC, "panic", data={"pin": 17})
        ob.put(a)
        ob.ack([ob.put(b)])  # B delivered, A still pending (refused, say)
        top = ob.top_seq()
    StateFile(cfg.outbox.path.with_name("agent-state.json")).save(State("b-old", top, alarms=(b.id, a.id)))
    ft.advance(60)
    with Agent(cfg, clock=ft.clock(), notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.indicators is not None
        assert agent.recorder is not None
        assert agent.recorder.latest_alarms()[:2] == [b.id, a.id], "the next state file keeps the order"
        agent.indicators.alarm_delivered(a.id)
        assert agent.indicators.acknowledged(b.id)  # the centre acks the newest press
        assert agent.indicators.patterns()["ack_led"]["pattern"] == "acknowledged"


def test_carry__pending_alarms_the_state_file_does_not_list_go_by_the_saved_mark() -> None:
    def row(seq: int) -> OutboxRow:
        return OutboxRow(seq, f"{seq:032x}", "panic", True, 0.0, "{}")

    listed = (f"{9:032x}", f"{7:032x}")  # newest first, saved with mark 10
    pending = {r.id: r for r in (row(2), row(7), row(12), row(11))}  # 2: beyond the kept; 11, 12: after the save
    assert in_press_order(State("b", 10, alarms=listed), pending) == [
        f"{2:032x}",
        f"{7:032x}",
        f"{9:032x}",
        f"{11:032x}",
        f"{12:032x}",
    ]
