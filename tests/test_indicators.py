"""Indicator patterns: the pure timelines, the state machine on a fake clock, and real MockFactory pins."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import LED, Buzzer
from gpiozero.pins.mock import MockPin

from agent import schemas
from agent.config.model import OutputConfig, OutputsConfig
from agent.errors import HardwareError
from agent.indicators import Indicators
from agent.patterns import Pattern, level, next_edge
from tests.support.clocks import FakeTime
from tests.support.waiting import eventually

LED_PIN, BUZZER_PIN = 22, 23
T0 = 1000.0  # where the fake_time fixture starts
HOLD, FAULT_AFTER, SENT_HOLD = 30.0, 60.0, 120.0


class WatchedPin(MockPin):  # type: ignore[misc]  # gpiozero ships no types: MockPin is Any to mypy
    """A MockPin that counts writes (MockPin itself keeps the history in ``states``)."""

    def __init__(self, factory: Any, info: Any) -> None:
        self.writes = 0
        super().__init__(factory, info)

    def _set_state(self, value: Any) -> None:
        self.writes += 1
        super()._set_state(value)


class FlakyPin(MockPin):  # type: ignore[misc]  # gpiozero ships no types: MockPin is Any to mypy
    """A MockPin whose writes fail with EIO: ``offs`` times when it would switch off, or all while ``broken``."""

    def __init__(self, factory: Any, info: Any) -> None:
        self.offs = 0
        self.broken = False
        super().__init__(factory, info)

    def _set_state(self, value: Any) -> None:
        failing_off = self.offs > 0 and not value and self.state
        if failing_off:
            self.offs -= 1
        if self.broken or failing_off:
            raise OSError(5, "Input/output error")
        super()._set_state(value)


def outputs(*, led: bool = True, buzzer: bool = True, active_high: bool = True) -> OutputsConfig:
    return OutputsConfig(
        ack_led=OutputConfig(pin=LED_PIN, active_high=active_high) if led else None,
        buzzer=OutputConfig(pin=BUZZER_PIN, active_high=active_high) if buzzer else None,
        ack_hold_s=HOLD,
        fault_after_s=FAULT_AFTER,
    )


@pytest.fixture
def ind(mock_factory: Any, fake_time: FakeTime) -> Iterator[Indicators]:
    """Connected indicators on mock pins 22 (LED) and 23 (buzzer), driven by tick() only."""
    i = Indicators(outputs(), pin_factory=mock_factory, mono=fake_time, sent_hold_s=SENT_HOLD)
    i.start(start_thread=False)
    i.link(True)
    i.tick(fake_time.t)
    yield i
    i.close()


def at(ind: Indicators, fake_time: FakeTime, t: float) -> dict[str, str]:
    fake_time.t = t
    ind.tick(t)
    return {name: p["pattern"] for name, p in ind.patterns().items()}


def run(ind: Indicators, fake_time: FakeTime, pins: dict[str, Any], until: float, step: float = 0.01) -> dict[str, Any]:
    """Tick every ``step`` seconds up to ``until`` (since T0); each pin's changes as (time since T0, state)."""
    changes: dict[str, list[tuple[float, bool]]] = {name: [] for name in pins}
    last = {name: pin.state for name, pin in pins.items()}
    start = fake_time.t
    for k in range(1, round((T0 + until - start) / step) + 1):
        fake_time.t = start + k * step
        ind.tick(fake_time.t)
        for name, pin in pins.items():
            if pin.state != last[name]:
                last[name] = pin.state
                changes[name].append((round(fake_time.t - T0, 3), pin.state))
    return changes


@pytest.fixture
def pins(mock_factory: Any) -> dict[str, Any]:
    return {"led": mock_factory.pin(LED_PIN), "buzzer": mock_factory.pin(BUZZER_PIN)}


# ---- the pure timelines ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "pattern", "t", "on"),
    [
        ("ack_led", "idle", 0.0, True),
        ("ack_led", "idle", 0.049, True),
        ("ack_led", "idle", 0.05, False),
        ("ack_led", "idle", 4.99, False),
        ("ack_led", "idle", 5.0, True),
        ("ack_led", "idle", 86400.01, True),
        ("ack_led", "sending", 0.0, True),
        ("ack_led", "sending", 0.124, True),
        ("ack_led", "sending", 0.125, False),
        ("ack_led", "sending", 0.25, True),
        ("ack_led", "sending", 0.375, False),
        ("ack_led", "sent", 0.0, True),
        ("ack_led", "sent", 0.499, True),
        ("ack_led", "sent", 0.5, False),
        ("ack_led", "sent", 1.0, True),
        ("ack_led", "acknowledged", 0.0, True),
        ("ack_led", "acknowledged", 3600.0, True),
        ("ack_led", "fault", 0.0, True),
        ("ack_led", "fault", 0.1, False),
        ("ack_led", "fault", 0.25, True),
        ("ack_led", "fault", 0.35, False),
        ("ack_led", "fault", 1.99, False),
        ("ack_led", "fault", 2.0, True),
        ("buzzer", "idle", 0.0, False),
        ("buzzer", "idle", 5.0, False),
        ("buzzer", "sending", 0.0, True),
        ("buzzer", "sending", 0.099, True),
        ("buzzer", "sending", 0.1, False),
        ("buzzer", "sending", 0.25, False),
        ("buzzer", "sending", 60.0, False),
        ("buzzer", "sent", 0.05, True),
        ("buzzer", "sent", 0.15, False),
        ("buzzer", "sent", 0.25, True),
        ("buzzer", "sent", 0.3, False),
        ("buzzer", "sent", 1.0, False),
        ("buzzer", "acknowledged", 0.0, True),
        ("buzzer", "acknowledged", 0.999, True),
        ("buzzer", "acknowledged", 1.0, False),
        ("buzzer", "fault", 0.0, False),
        ("buzzer", "fault", 1.0, False),
        ("ack_led", "sending", -0.01, False),
        ("ack_led", "acknowledged", -1.0, False),
    ],
)
def test_level__table(output: str, pattern: str, t: float, on: bool) -> None:
    assert level(output, pattern, t) is on


def test_level__unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no pattern 'blink' for output 'ack_led'"):
        level("ack_led", "blink", 0.0)
    with pytest.raises(ValueError, match="no pattern 'idle' for output 'siren'"):
        next_edge("siren", "idle", 0.0)


@pytest.mark.parametrize(
    ("output", "pattern", "t", "edge"),
    [
        ("ack_led", "idle", 0.0, 0.05),
        ("ack_led", "idle", 0.05, 5.0),
        ("ack_led", "idle", 7.0, 10.0),
        ("ack_led", "sending", 0.1, 0.125),
        ("ack_led", "sent", 0.6, 1.0),
        ("ack_led", "fault", 0.12, 0.25),
        ("ack_led", "fault", 0.3, 0.35),
        ("ack_led", "fault", 1.0, 2.0),
        ("ack_led", "acknowledged", 0.0, None),
        ("ack_led", "acknowledged", -1.0, 0.0),
        ("buzzer", "idle", 0.0, None),
        ("buzzer", "fault", 3.0, None),
        ("buzzer", "sending", 0.0, 0.1),
        ("buzzer", "sending", 0.1, None),
        ("buzzer", "sent", 0.15, 0.2),
        ("buzzer", "sent", 0.25, 0.3),
        ("buzzer", "acknowledged", 0.5, 1.0),
        ("buzzer", "acknowledged", 1.5, None),
    ],
)
def test_next_edge__table(output: str, pattern: str, t: float, edge: float | None) -> None:
    assert next_edge(output, pattern, t) == edge


@pytest.mark.parametrize("output", ["ack_led", "buzzer"])
@pytest.mark.parametrize("pattern", list(Pattern))
def test_next_edge__agrees_with_level(output: str, pattern: str) -> None:
    for k in range(0, 6000, 7):
        t = k / 1000
        edge = next_edge(output, pattern, t)
        end = edge if edge is not None else t + 10.0
        assert all(level(output, pattern, t + j * (end - t) / 50) == level(output, pattern, t) for j in range(50))
        if edge is not None:
            assert level(output, pattern, edge) != level(output, pattern, t)


def test_patterns__match_the_status_schema() -> None:
    outputs_schema = schemas.load("status")["$defs"]["online"]["properties"]["outputs"]
    assert outputs_schema["additionalProperties"]["properties"]["pattern"]["enum"] == [p.value for p in Pattern]


def test_patterns__led_patterns_differ_at_a_glance() -> None:
    """Over 2 s, no two LED patterns light the LED the same way."""
    shapes = {tuple(level("ack_led", p, k / 100) for k in range(200)) for p in Pattern}
    assert len(shapes) == len(Pattern)


# ---- the state machine on a fake clock ---------------------------------------------------------


def test_state__idle_while_armed_and_connected(ind: Indicators, fake_time: FakeTime) -> None:
    assert at(ind, fake_time, T0 + 3600) == {"ack_led": "idle", "buzzer": "idle"}


def test_state__recorded_sending_delivered_sent_then_idle(ind: Indicators, fake_time: FakeTime) -> None:
    ind.alarm_recorded("e1", silent=False)
    assert at(ind, fake_time, T0 + 1) == {"ack_led": "sending", "buzzer": "sending"}
    fake_time.t = T0 + 2
    ind.alarm_delivered("e1")
    assert at(ind, fake_time, T0 + 2) == {"ack_led": "sent", "buzzer": "sent"}
    assert at(ind, fake_time, T0 + 2 + SENT_HOLD - 0.01)["ack_led"] == "sent"
    assert at(ind, fake_time, T0 + 2 + SENT_HOLD)["ack_led"] == "idle"


def test_state__sending_lasts_until_every_alarm_is_delivered(ind: Indicators, fake_time: FakeTime) -> None:
    ind.alarm_recorded("e1", silent=False)
    ind.alarm_recorded("e2", silent=False)
    ind.alarm_delivered("e1")
    ind.alarm_delivered("unknown")
    assert at(ind, fake_time, T0 + 1)["ack_led"] == "sending"
    ind.alarm_delivered("e2")
    assert at(ind, fake_time, T0 + 2)["ack_led"] == "sent"


def test_state__ack_holds_for_ack_hold_s_then_returns(ind: Indicators, fake_time: FakeTime) -> None:
    ind.alarm_recorded("e1", silent=False)
    ind.alarm_delivered("e1")
    fake_time.t = T0 + 5
    assert ind.acknowledged("e1") is True
    assert at(ind, fake_time, T0 + 5) == {"ack_led": "acknowledged", "buzzer": "acknowledged"}
    assert at(ind, fake_time, T0 + 5 + HOLD - 0.01)["ack_led"] == "acknowledged"
    assert at(ind, fake_time, T0 + 5 + HOLD) == {"ack_led": "idle", "buzzer": "idle"}


def test_state__ack_before_delivery_counts_as_delivered(ind: Indicators, fake_time: FakeTime) -> None:
    ind.alarm_recorded("e1", silent=False)
    assert ind.acknowledged("e1") is True
    assert at(ind, fake_time, T0 + 1)["ack_led"] == "acknowledged"
    assert at(ind, fake_time, T0 + HOLD + 1)["ack_led"] == "idle"


def test_state__ack_of_an_older_alarm_does_not_hide_a_newer_one(ind: Indicators, fake_time: FakeTime) -> None:
    """Issue 14.4: a replayed or late ack for e1 must not show "acknowledged" while e2 is unanswered."""
    ind.alarm_recorded("e1", silent=False)
    ind.alarm_delivered("e1")
    ind.alarm_recorded("e2", silent=False)
    assert ind.acknowledged("e1") is True  # it is ours: the reply still says ok
    assert at(ind, fake_time, T0 + 1) == {"ack_led": "sending", "buzzer": "sending"}
    ind.alarm_delivered("e2")
    assert at(ind, fake_time, T0 + 2)["ack_led"] == "sent"
    assert ind.acknowledged("e2") is True
    assert at(ind, fake_time, T0 + 3)["ack_led"] == "acknowledged"


def test_state__ack_of_the_newest_alarm_outranks_an_older_pending_one(ind: Indicators, fake_time: FakeTime) -> None:
    ind.alarm_recorded("e1", silent=False)
    ind.alarm_recorded("e2", silent=False)
    ind.acknowledged("e2")
    assert at(ind, fake_time, T0 + 1)["ack_led"] == "acknowledged"
    assert at(ind, fake_time, T0 + HOLD + 1)["ack_led"] == "sending"


def test_state__an_older_alarm_is_not_sent_again_after_the_newest_was_acknowledged(
    ind: Indicators, fake_time: FakeTime, pins: dict[str, Any]
) -> None:
    """Two quick presses, the centre acks the newest: when its hold ended, the outputs went back to
    ``sent`` for the older press (LED blinking, buzzer chirping), as if the centre had not seen it."""
    ind.alarm_recorded("e1", silent=False)
    ind.alarm_recorded("e2", silent=False)
    ind.alarm_delivered("e1")
    ind.alarm_delivered("e2")
    run(ind, fake_time, pins, until=1.0)
    ind.acknowledged("e2")
    assert run(ind, fake_time, pins, until=1 + HOLD + 5)["buzzer"] == [(1.01, True), (2.01, False)]  # the tone only
    assert ind.patterns() == {"ack_led": {"pattern": "idle"}, "buzzer": {"pattern": "idle"}}


def test_state__a_late_ack_of_an_older_alarm_changes_nothing(
    ind: Indicators, fake_time: FakeTime, pins: dict[str, Any]
) -> None:
    """The centre acks the newest press, then, 20 s later, the older one: that ack sounded the 1 s tone
    again and held "acknowledged" 30 s from then, though the outputs follow the newest alarm."""
    ind.alarm_recorded("e1", silent=False)
    ind.alarm_recorded("e2", silent=False)
    ind.alarm_delivered("e1")
    ind.alarm_delivered("e2")
    run(ind, fake_time, pins, until=1.0)
    ind.acknowledged("e2")
    run(ind, fake_time, pins, until=21.0)
    assert ind.acknowledged("e1") is True  # ours: the reply still says ok
    changes = run(ind, fake_time, pins, until=1 + HOLD + 5)
    assert changes["buzzer"] == []
    assert changes["led"][0] == (31.05, False)  # e2's hold ended on time, into idle's first flash
    assert ind.patterns() == {"ack_led": {"pattern": "idle"}, "buzzer": {"pattern": "idle"}}


def test_state__the_buzzer_follows_the_newest_audible_alarm(ind: Indicators, fake_time: FakeTime) -> None:
    """A silent press after an audible one: the LED follows the silent one, the buzzer the audible one."""
    ind.alarm_recorded("loud", silent=False)
    ind.alarm_recorded("quiet", silent=True)
    ind.alarm_delivered("loud")
    ind.alarm_delivered("quiet")
    ind.acknowledged("loud")
    assert at(ind, fake_time, T0 + 1) == {"ack_led": "sent", "buzzer": "acknowledged"}
    ind.acknowledged("quiet")
    assert at(ind, fake_time, T0 + 2) == {"ack_led": "acknowledged", "buzzer": "acknowledged"}


def test_state__a_repeated_ack_does_not_restart_the_hold(ind: Indicators, fake_time: FakeTime) -> None:
    ind.alarm_recorded("e1", silent=False)
    ind.acknowledged("e1")
    fake_time.t = T0 + HOLD - 1
    assert ind.acknowledged("e1") is True
    assert at(ind, fake_time, T0 + HOLD + 0.5)["ack_led"] == "idle"


def test_state__unknown_event_ack_is_false(ind: Indicators, fake_time: FakeTime) -> None:
    assert ind.acknowledged("not-ours") is False
    assert at(ind, fake_time, T0 + 1)["ack_led"] == "idle"


def test_state__delivery_before_the_record_shows_sent_never_sending(ind: Indicators, fake_time: FakeTime) -> None:
    """The recorder announces an alarm a few ms after its PUBLISH (agent/inputs.py, LATER_S): the PUBACK may win."""
    fake_time.t = T0 + 1
    ind.alarm_delivered("e1")
    assert at(ind, fake_time, T0 + 1)["ack_led"] == "idle"  # nothing recorded yet
    ind.alarm_recorded("e1", silent=False)
    assert at(ind, fake_time, T0 + 1.003) == {"ack_led": "sent", "buzzer": "sent"}
    assert at(ind, fake_time, T0 + 1 + SENT_HOLD - 0.01)["ack_led"] == "sent"
    assert at(ind, fake_time, T0 + 1 + SENT_HOLD)["ack_led"] == "idle"  # the hold counts from the PUBACK


def test_state__ack_before_the_record_shows_acknowledged(ind: Indicators, fake_time: FakeTime) -> None:
    fake_time.t = T0 + 1
    assert ind.acknowledged("e1") is False  # not recorded here yet: the command handler asks the recorder
    ind.alarm_delivered("e1")  # the PUBACK after the centre's ack changes nothing
    ind.alarm_recorded("e1", silent=False)
    assert at(ind, fake_time, T0 + 1.003) == {"ack_led": "acknowledged", "buzzer": "acknowledged"}
    assert ind.acknowledged("e1") is True
    assert at(ind, fake_time, T0 + 1 + HOLD) == {"ack_led": "idle", "buzzer": "idle"}


def test_state__early_news_is_bounded_and_forgets_the_oldest(ind: Indicators, fake_time: FakeTime) -> None:
    for k in range(100):  # deliveries of ids never recorded here (another device's, a forged ack)
        ind.alarm_delivered(f"x{k}")
    ind.alarm_recorded("x99", silent=False)
    assert at(ind, fake_time, T0 + 1)["ack_led"] == "sent"
    ind.alarm_recorded("x0", silent=False)  # its news was forgotten: it waits for a PUBACK, as before
    assert at(ind, fake_time, T0 + 2)["ack_led"] == "sending"


def test_state__fault_after_fault_after_s_disconnected(ind: Indicators, fake_time: FakeTime) -> None:
    fake_time.t = T0 + 10
    ind.link(False)
    assert at(ind, fake_time, T0 + 10 + FAULT_AFTER)["ack_led"] == "idle"
    assert at(ind, fake_time, T0 + 10 + FAULT_AFTER + 0.01) == {"ack_led": "fault", "buzzer": "fault"}
    ind.alarm_recorded("e1", silent=False)
    assert at(ind, fake_time, T0 + 100)["ack_led"] == "sending"
    ind.link(True)
    ind.alarm_delivered("e1")
    assert at(ind, fake_time, T0 + 101)["ack_led"] == "sent"
    assert at(ind, fake_time, T0 + 101 + SENT_HOLD)["ack_led"] == "idle"


def test_state__never_connected_faults_after_start(mock_factory: Any, fake_time: FakeTime) -> None:
    with Indicators(outputs(), pin_factory=mock_factory, mono=fake_time) as ind:
        assert at(ind, fake_time, T0 + FAULT_AFTER)["ack_led"] == "idle"
        assert at(ind, fake_time, T0 + FAULT_AFTER + 1)["ack_led"] == "fault"


def test_state__silent_alarm_leaves_the_buzzer_out(ind: Indicators, fake_time: FakeTime) -> None:
    ind.alarm_recorded("quiet", silent=True)
    assert at(ind, fake_time, T0 + 1) == {"ack_led": "sending", "buzzer": "idle"}
    ind.alarm_delivered("quiet")
    ind.acknowledged("quiet")
    assert at(ind, fake_time, T0 + 2) == {"ack_led": "acknowledged", "buzzer": "idle"}


def test_state__recent_alarms_are_bounded(ind: Indicators, fake_time: FakeTime) -> None:
    for k in range(300):
        ind.alarm_recorded(f"e{k}", silent=False)
    assert ind.acknowledged("e0") is False
    assert ind.acknowledged("e299") is True


def test_state__no_outputs_claims_nothing(mock_factory: Any, fake_time: FakeTime) -> None:
    with Indicators(outputs(led=False, buzzer=False), pin_factory=mock_factory, mono=fake_time) as ind:
        ind.start()
        ind.alarm_recorded("e1", silent=False)
        assert ind.acknowledged("e1") is True
        ind.tick(T0 + 1)
        assert ind.patterns() == {}
        assert not mock_factory.pins
        assert repr(ind) == "<Indicators no outputs>"


# ---- the pins, over time -----------------------------------------------------------------------


def test_pins__idle_flash_every_5_s(ind: Indicators, fake_time: FakeTime, pins: dict[str, Any]) -> None:
    assert run(ind, fake_time, pins, until=12.0) == {
        "led": [(0.05, False), (5.0, True), (5.05, False), (10.0, True), (10.05, False)],
        "buzzer": [],
    }
    assert len(pins["buzzer"].states) == 1


def test_pins__an_alarm_from_press_to_ack(ind: Indicators, fake_time: FakeTime, pins: dict[str, Any]) -> None:
    run(ind, fake_time, pins, until=1.0)
    ind.alarm_recorded("e1", silent=False)
    ind.tick(fake_time.t)
    assert (pins["led"].state, pins["buzzer"].state) == (True, True)
    assert run(ind, fake_time, pins, until=3.0, step=0.005) == {
        "led": [(1.0 + k * 0.125, k % 2 == 0) for k in range(1, 17)],
        "buzzer": [(1.1, False)],
    }
    ind.alarm_delivered("e1")
    assert run(ind, fake_time, pins, until=5.0) == {
        "led": [(3.51, False), (4.01, True), (4.51, False)],  # on at 3.0 already (4 Hz), on through 3.5
        "buzzer": [(3.01, True), (3.11, False), (3.21, True), (3.31, False)],
    }
    ind.acknowledged("e1")
    assert run(ind, fake_time, pins, until=5 + HOLD + 1) == {
        "led": [(5.01, True), (35.05, False)],  # the hold ends at 35.0 into idle's first 50 ms flash
        "buzzer": [(5.01, True), (6.01, False)],
    }
    assert ind.patterns() == {"ack_led": {"pattern": "idle"}, "buzzer": {"pattern": "idle"}}


def test_pins__fault_double_flash(ind: Indicators, fake_time: FakeTime, pins: dict[str, Any]) -> None:
    ind.link(False)
    run(ind, fake_time, pins, until=FAULT_AFTER)
    assert pins["led"].state is True  # the idle flash at 60 s runs on into the fault's first flash
    assert run(ind, fake_time, pins, until=FAULT_AFTER + 2.5) == {
        "led": [
            (60.11, False),
            (60.26, True),
            (60.36, False),
            (62.01, True),
            (62.11, False),
            (62.26, True),
            (62.36, False),
        ],
        "buzzer": [],
    }


def test_pins__silent_input_never_sounds(ind: Indicators, fake_time: FakeTime, pins: dict[str, Any]) -> None:
    ind.alarm_recorded("quiet", silent=True)
    run(ind, fake_time, pins, until=2.0)
    ind.alarm_delivered("quiet")
    run(ind, fake_time, pins, until=4.0)
    ind.acknowledged("quiet")
    # steady for ack_hold_s, then idle, whose first 50 ms flash runs on from the steady light
    assert run(ind, fake_time, pins, until=40.0)["led"] == [(4.01, True), (34.05, False), (39.0, True), (39.05, False)]
    assert [s.state for s in pins["buzzer"].states] == [False]


def test_pins__active_low_outputs_are_inverted(mock_factory: Any, fake_time: FakeTime) -> None:
    with Indicators(outputs(active_high=False), pin_factory=mock_factory, mono=fake_time) as ind:
        ind.start(start_thread=False)
        led, buzzer = mock_factory.pin(LED_PIN), mock_factory.pin(BUZZER_PIN)
        assert (led.state, buzzer.state) == (True, True)  # high = off
        ind.link(True)
        ind.tick(T0)
        assert (led.state, buzzer.state) == (False, True)  # idle flash starts: LED lit by driving low
        assert run(ind, fake_time, {"led": led}, until=6.0) == {"led": [(0.05, True), (5.0, False), (5.05, True)]}
        ind.alarm_recorded("e1", silent=False)
        ind.tick(fake_time.t)
        assert buzzer.state is False
    assert (led.state, buzzer.state) == (True, True)


def test_pins__written_only_on_change(mock_factory: Any, fake_time: FakeTime) -> None:
    led = mock_factory.pin(LED_PIN, pin_class=WatchedPin)
    with Indicators(outputs(buzzer=False), pin_factory=mock_factory, mono=fake_time) as ind:
        ind.start(start_thread=False)
        ind.link(True)
        led.writes = 0
        ind.tick(T0)
        changes = run(ind, fake_time, {"led": led}, until=11.0, step=0.005)["led"]
        assert led.writes == 1 + len(changes) == 6


def test_pins__a_failing_output_is_named_until_a_write_succeeds(mock_factory: Any, fake_time: FakeTime) -> None:
    """A pin that failed at run time was only logged: nothing said the presser saw no feedback.  A write
    that failed is also tried again at the next tick even when the level wanted has not changed."""
    led = mock_factory.pin(LED_PIN, pin_class=FlakyPin)
    with Indicators(outputs(buzzer=False), pin_factory=mock_factory, mono=fake_time) as ind:
        ind.start(start_thread=False)
        ind.link(True)
        led.broken = True
        ind.tick(T0)  # idle's flash: on
        assert ind.failing() == ["ack_led on GPIO22"]
        led.broken = False
        ind.tick(T0 + 0.01)  # still within the flash: the same level, written again
        assert (ind.failing(), led.state) == ([], True)
    assert ind.failing() == []


def test_pins__close_releases_a_pin_that_cannot_be_switched_off(mock_factory: Any, fake_time: FakeTime) -> None:
    """close() skipped releasing the pin when switching it off raised: it stayed claimed."""
    buzzer = mock_factory.pin(BUZZER_PIN, pin_class=FlakyPin)
    ind = Indicators(outputs(led=False), pin_factory=mock_factory, mono=fake_time)
    ind.start(start_thread=False)
    ind.alarm_recorded("e1", silent=False)
    ind.tick(T0)
    assert buzzer.state is True
    buzzer.broken = True
    ind.close()
    assert buzzer.function == "input"  # released, as a clean close leaves it
    buzzer.broken = False
    Buzzer(BUZZER_PIN, pin_factory=mock_factory).close()  # and it can be claimed again


def test_pins__claim_failure_names_the_pin(mock_factory: Any, fake_time: FakeTime) -> None:
    other = LED(BUZZER_PIN, pin_factory=mock_factory)
    ind = Indicators(outputs(), pin_factory=mock_factory, mono=fake_time)
    with pytest.raises(HardwareError, match=r"outputs\.buzzer: cannot claim GPIO23: "):
        ind.start()
    assert repr(ind) == "<Indicators closed>"
    LED(LED_PIN, pin_factory=mock_factory).close()  # the LED pin claimed first was released
    other.close()


def test_pins__close_switches_off_and_is_idempotent(ind: Indicators, fake_time: FakeTime, mock_factory: Any) -> None:
    ind.alarm_recorded("e1", silent=False)
    ind.tick(fake_time.t)
    assert mock_factory.pin(BUZZER_PIN).state is True
    ind.close()
    ind.close()
    ind.tick(fake_time.t + 1)
    assert mock_factory.pin(LED_PIN).state is False
    assert mock_factory.pin(BUZZER_PIN).state is False
    Buzzer(BUZZER_PIN, pin_factory=mock_factory).close()


def test_thread__drives_the_pins_on_its_own(mock_factory: Any) -> None:
    buzzer = mock_factory.pin(BUZZER_PIN, pin_class=WatchedPin)
    with Indicators(outputs(), pin_factory=mock_factory) as ind:
        ind.link(True)
        ind.start()
        before = ind.progress
        ind.alarm_recorded("e1", silent=False)
        # the pin's history, not its state now: a short chirp cannot slip between two polls
        eventually(lambda: len(buzzer.states) >= 3, what=lambda: f"the chirp to start and end: {buzzer.states}")
        assert ind.patterns() == {"ack_led": {"pattern": "sending"}, "buzzer": {"pattern": "sending"}}
        assert ind.progress > before
        assert [s.state for s in buzzer.states] == [False, True, False]
        assert 0.09 < buzzer.states[2].timestamp < 1.0  # the chirp's length, timed by MockPin on the real fake_time
    assert (mock_factory.pin(LED_PIN).state, buzzer.state) == (False, False)


def test_thread__a_failed_write_is_retried_at_once(mock_factory: Any) -> None:
    """One failed write (EIO) where the 1 s ack tone ends: the thread tried again only at its 10 s idle
    wake, so the presser heard a tone of about 11 s (a failed off() of the LED: steady, "acknowledged")."""
    buzzer = mock_factory.pin(BUZZER_PIN, pin_class=FlakyPin)
    with Indicators(outputs(led=False), pin_factory=mock_factory) as ind:
        ind.link(True)
        ind.alarm_recorded("e1", silent=False)
        ind.acknowledged("e1")  # the thread starts on the tone: no chirp before it
        buzzer.offs = 1
        ind.start()
        eventually(lambda: buzzer.offs == 0, what=lambda: f"the write ending the tone to fail: {buzzer.states}")
        # a ceiling, far above the 0.2 s retry and far below the 10 s wake it used to wait for
        eventually(lambda: not buzzer.state, timeout=5.0, what="the buzzer to go off after one failed write")
        assert [s.state for s in buzzer.states] == [False, True, False]
