"""Stuck-input supervision at its limit: a release still inside its debounce is judged by its own stamp.

Before, the stuck check judged by the poll's time: a press let go 20 ms
before a 10 s limit, polled while the release was still debouncing, became a
spurious ``input_fault`` and then ``input_restored``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from agent.config.model import Contact, InputConfig, InputKind
from agent.events import Stamp
from agent.inputs import Inputs
from agent.watched_input import WatchedInput
from tests.support.clocks import FakeTime

LIMIT_S = 10.0


def _cfg(*, debounce_ms: int = 50) -> InputConfig:
    return InputConfig("panic", InputKind.PANIC_BUTTON, 17, Contact.NORMALLY_OPEN, debounce_ms, LIMIT_S, False)


def _st(t: float) -> Stamp:
    return Stamp(wall=1.7e9 + t, mono=t, synced=True)


def _pressed_at_zero() -> WatchedInput:
    item = WatchedInput(_cfg(), SimpleNamespace(pin_factory=None), lambda *_a, **_k: None)
    item.debouncer.edge(level=True, stamp=_st(0.0))
    first = item.debouncer.settle(0.06)
    assert first is not None
    assert item.accept(first) is not None
    return item


def _run(mock_factory: Any, steps: list[tuple[float, bool | None]]) -> list[str]:
    """Press at t0, then (seconds after t0, pin level to drive or None) with a poll after each step."""
    mono = FakeTime()
    clock = mono.clock(synced=True)
    t0 = mono.t
    events: list[str] = []
    inputs = Inputs(
        (_cfg(),), pin_factory=mock_factory, clock=clock, emit=lambda b: events.extend(k.value for k, *_ in b)
    )
    inputs.arm(start_thread=False)
    pin = mock_factory.pin(17)
    pin.drive_low()
    for at, pressed in steps:
        mono.t = t0 + at
        if pressed is True:
            pin.drive_low()
        elif pressed is False:
            pin.drive_high()
        inputs.poll(mono.t)
    inputs.close()
    return events


def test_stuck_boundary__release_just_before_the_limit_inside_its_debounce_is_no_fault(mock_factory: Any) -> None:
    # Released at 9.98 s; the thread's stuck-deadline poll comes at 10.005 s, 25 ms into the release's debounce.
    events = _run(mock_factory, [(0.06, None), (9.98, False), (10.005, None), (10.1, None)])
    assert events == ["panic"], f"a press held 9.98 s of a {LIMIT_S:g} s stuck limit became {events}"


def test_stuck_boundary__no_stuck_deadline_while_an_earlier_release_debounces() -> None:
    """The release's own debounce deadline wakes the thread; a stuck deadline already past would spin it."""
    item = _pressed_at_zero()
    assert item.stuck_due() == LIMIT_S
    item.debouncer.edge(level=False, stamp=_st(9.98))
    assert item.stuck_due() is None
    assert item.check_stuck(10.005, FakeTime(10.005).clock()) is None
    assert item.debouncer.deadline() is not None


def test_stuck_boundary__release_after_the_limit_still_faults_then_restores(mock_factory: Any) -> None:
    events = _run(mock_factory, [(0.06, None), (10.02, False), (10.03, None), (10.2, None)])
    assert events == ["panic", "input_fault", "input_restored"]


def test_stuck_boundary__a_release_glitch_before_the_limit_does_not_cancel_the_fault(mock_factory: Any) -> None:
    # Let go for 10 ms (shorter than the 50 ms debounce) just before the limit: the press never ended.
    events = _run(mock_factory, [(0.06, None), (9.98, False), (9.99, True), (10.005, None), (10.1, None)])
    assert events == ["panic", "input_fault"]
