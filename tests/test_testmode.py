"""Test mode judges a press by when it was made, not by when the recorder got to it.

A press is recorded at least ``debounce_ms`` after its first edge, and later
still when the inputs thread replays edges queued behind a slow commit; test
mode may start or end in between (a hunt found both ways wrong).  A real
alarm sent as a test is one the centre files as routine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.model import Contact, InputConfig, InputKind
from agent.health import TestMode
from agent.inputs import Inputs
from agent.outbox import Outbox
from agent.recorder import Recorder
from tests.support.clocks import FakeTime


def _cfg() -> InputConfig:
    return InputConfig(
        name="panic",
        kind=InputKind.PANIC_BUTTON,
        pin=17,
        contact=Contact.NORMALLY_OPEN,
        debounce_ms=50,
        stuck_after_s=0,
        silent=False,
    )


@pytest.fixture
def rig(tmp_path: Path, mock_factory: Any) -> Iterator[tuple[FakeTime, TestMode, Outbox, Any]]:
    t = FakeTime()
    clock = t.clock()
    tm = TestMode(clock)
    outbox = Outbox(tmp_path / "outbox.db", site="main", device="gate-1", mono=t, wall=t.wall)
    rec = Recorder(outbox, clock=clock, site="main", device="gate-1", test_mode=tm.active_at)
    inputs = Inputs((_cfg(),), pin_factory=mock_factory, clock=clock, emit=rec.record_deferring)
    inputs.arm(start_thread=False)
    try:
        yield t, tm, outbox, inputs
    finally:
        inputs.close()
        rec.close()
        outbox.close()


def _panics(outbox: Outbox) -> list[dict[str, Any]]:
    return [d for d in (json.loads(r.payload) for r in outbox.next_batch(0, 100)) if d["type"] == "panic"]


def test_testmode__a_press_made_in_test_mode_stays_a_test_when_the_mode_ends_during_its_debounce(
    rig: tuple[FakeTime, TestMode, Outbox, Any], mock_factory: Any
) -> None:
    t, tm, outbox, inputs = rig
    tm.set(1.0)
    t.advance(60.0 - 0.02)  # the technician presses 20 ms before test mode ends
    mock_factory.pin(17).drive_low()
    t.advance(0.06)  # the debounce accepts it 40 ms after the end
    inputs.poll(t.t)
    [doc] = _panics(outbox)
    assert doc["test"] is True, "a press made in test mode went out as a real alarm"


def test_testmode__a_real_press_recorded_late_stays_real_when_the_mode_starts_meanwhile(
    rig: tuple[FakeTime, TestMode, Outbox, Any], mock_factory: Any
) -> None:
    t, tm, outbox, inputs = rig
    pin = mock_factory.pin(17)
    pin.drive_low()  # a real press
    t.advance(0.3)
    pin.drive_high()
    t.advance(1.0)  # the inputs thread is stuck behind a slow commit meanwhile ...
    tm.set(30.0)  # ... and the centre starts test mode
    t.advance(1.0)
    inputs.poll(t.t)
    [doc] = _panics(outbox)
    assert doc["test"] is False, "a real press made before test mode began went out as a test"


def test_testmode__windows_follow_set_extend_and_end() -> None:
    t = FakeTime()
    tm = TestMode(t.clock())
    start = t.t
    tm.set(1.0)
    assert tm.active_at(start)
    assert tm.active_at(start + 59.9)
    assert not tm.active_at(start - 0.001)
    t.advance(30.0)
    tm.set(2.0)  # extended from now
    assert tm.active_at(start + 149.0)
    assert not tm.active_at(start + 150.0)
    t.advance(10.0)
    tm.set(0)  # ended early
    assert tm.active_at(start + 39.9)
    assert not tm.active_at(start + 40.0)
    assert not tm.active()
    for _ in range(6):  # later windows; the first ones are forgotten, never the last
        t.advance(100.0)
        tm.set(1.0)
    assert tm.active_at(t.t)
    assert not tm.active_at(start + 1.0)
