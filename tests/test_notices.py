"""Status warnings (agent/notices.py): each degraded mode a technician should see, most urgent first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockPin

from agent.config import load_config
from agent.config.model import Config, OutputConfig, OutputsConfig
from agent.indicators import Indicators
from agent.notices import Notices
from tests.support.agentproc import write_config
from tests.support.clocks import FakeTime

LED_PIN, BUZZER_PIN = 22, 23


class BrokenPin(MockPin):  # type: ignore[misc]  # gpiozero ships no types: MockPin is Any to mypy
    """A MockPin whose writes fail with EIO while ``broken`` (a loose wire, a dying GPIO expander)."""

    def __init__(self, factory: Any, info: Any) -> None:
        self.broken = False
        super().__init__(factory, info)

    def _set_state(self, value: Any) -> None:
        if self.broken:
            raise OSError(5, "Input/output error")
        super()._set_state(value)


def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, 1, device="gate-notices"))


def test_notices__a_failing_output_pin_is_a_warning(tmp_path: Path, mock_factory: Any, fake_time: FakeTime) -> None:
    """An LED or buzzer pin failing at run time was only logged: the status kept showing the pattern
    meant, with no warning, so the office did not learn the presser sees or hears nothing."""
    pins = [mock_factory.pin(p, pin_class=BrokenPin) for p in (LED_PIN, BUZZER_PIN)]
    outputs = OutputsConfig(
        ack_led=OutputConfig(pin=LED_PIN, active_high=True),
        buzzer=OutputConfig(pin=BUZZER_PIN, active_high=True),
        ack_hold_s=30.0,
        fault_after_s=60.0,
    )
    with Indicators(outputs, pin_factory=mock_factory, mono=fake_time) as ind:
        ind.start(start_thread=False)
        notices = Notices(config(tmp_path), wall=fake_time.wall, mono=fake_time, outputs=ind.failing)
        ind.link(True)
        ind.alarm_recorded("e1", silent=False)  # both outputs on: a write to each
        ind.tick(fake_time.t)
        assert notices.lines() == []
        for pin in pins:
            pin.broken = True
        fake_time.advance(0.2)  # the chirp ends, the LED's blink turns off
        ind.tick(fake_time.t)
        lines = notices.lines()
        assert lines == ["LED/buzzer pin failing: ack_led on GPIO22, buzzer on GPIO23 cannot be switched (see the log)"]
        assert len(lines[0]) <= 120  # health.MAX_DETAIL: shown whole
        for pin in pins:
            pin.broken = False
        fake_time.advance(0.01)
        ind.tick(fake_time.t)
        assert notices.lines() == []


def test_notices__order_most_urgent_first(tmp_path: Path, fake_time: FakeTime) -> None:
    """The status keeps the first three lines: held events first (alarms at risk), then hardware, then the outputs.

    Held events came third: behind two hardware lines and the status's own "incomplete" line, the one warning
    that means alarms are at risk never reached the status or doctor.
    """
    notices = Notices(
        config(tmp_path), wall=fake_time.wall, mono=fake_time, held=lambda: 2, outputs=lambda: ["buzzer on GPIO23"]
    )
    notices.hardware.append("LED/buzzer unavailable: GPIO22 busy")
    notices.hardware.append("LED/buzzer unavailable: GPIO24 busy")
    assert notices.lines()[:3] == [
        "2 events held in memory: outbox cannot write",
        "LED/buzzer unavailable: GPIO22 busy",
        "LED/buzzer unavailable: GPIO24 busy",
    ]


def test_notices__a_failing_led_pin_shows_in_the_agents_status(tmp_path: Path) -> None:
    """The daemon's wiring: a pin that fails at run time reaches the status warnings, not only the log."""
    from agent.daemon import Agent
    from agent.events import Clock
    from agent.notify import Notifier
    from tests.support.broker import free_port
    from tests.support.waiting import eventually

    cfg = load_config(write_config(tmp_path, free_port(), device="gate-led", outputs={"ack_led": {"pin": 22}}))
    with Agent(cfg, clock=Clock(synced=lambda: True, boot_id="b"), notifier=Notifier(env={})) as agent:
        agent.start()
        pin = agent._factory.pin(22)

        def broken(_value: object) -> None:
            raise OSError(5, "Input/output error")

        pin._set_state = broken
        assert agent.inputs is not None
        agent.inputs.simulate("panic", active=True)
        agent.inputs.simulate("panic", active=False)
        eventually(
            lambda: any("ack_led" in w for w in agent.status_doc().get("warnings", [])),
            what="the failing LED pin in the status warnings",
        )
