"""Edges are timed by gpiozero's ``ticks`` (when the kernel saw them), not by when the late callback ran.

lgpio's callback thread can run late (the GIL, a loaded Pi) and then deliver a
press and its release back to back: judged on callback times a 200 ms press is
a 0.1 ms glitch, and lost.  :class:`LateFactory` is the mock factory with a real
pin's clock: a wrapping microsecond-like tick counter (as pigpio's) on the fake
time; the test plays gpiozero's callback thread, delivering each edge with its
ticks whenever that thread gets round to it.

Times are integers in units of 1/1024 s and ticks count 2**20 a second, so
every time, tick and age is exact in floating point.
"""

from __future__ import annotations

from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config.model import Contact, InputConfig, InputKind
from agent.events import Clock, EventType, Stamp
from agent.inputs import Inputs
from tests.support.clocks import WALL_AT_MONO_ZERO, FakeTime

UNIT = 1024  # time units per second
T0 = 1000.0  # monotonic seconds at unit 0, when the inputs are armed
TICKS_PER_S = 2**20
WRAP = 2**32  # the counter wraps every 4096 s, as pigpio's 32-bit microseconds do every 71.6 min
PIN = 17


def sec(units: int) -> float:
    return T0 + units / UNIT


class LateFactory(MockFactory):  # type: ignore[misc] # gpiozero is untyped
    """Mock pins whose ticks run on the fake time, from ``offset`` and wrapping (or not, as lgpio's seconds)."""

    def __init__(self, fake: FakeTime, offset: int = 0, *, wrap: bool = True) -> None:
        super().__init__()
        self._fake = fake
        self._offset = offset
        self._wrap = WRAP if wrap else 2**80

    def ticks(self) -> int:
        return self.ticks_at(self._fake.t)

    def ticks_at(self, mono: float) -> int:
        return (round(mono * TICKS_PER_S) + self._offset) % self._wrap

    def ticks_diff(self, later: int, earlier: int) -> float:
        diff = later - earlier
        return (diff % WRAP if self._wrap == WRAP else diff) / TICKS_PER_S


class Rig:
    """One button on a :class:`LateFactory`, its panics, and a wall clock the test may step."""

    def __init__(self, *, debounce_ms: int = 50, offset: int = 0, wrap: bool = True) -> None:
        self.fake = FakeTime(T0)
        self.wall_step = 0.0
        clock = Clock(wall=lambda: self.fake.wall() + self.wall_step, mono=self.fake, synced=lambda: True, boot_id="b")
        self.factory = LateFactory(self.fake, offset, wrap=wrap)
        self.panics: list[Stamp] = []
        cfg = InputConfig("panic", InputKind.PANIC_BUTTON, PIN, Contact.NORMALLY_OPEN, debounce_ms, 0.0, False)
        self.inputs = Inputs((cfg,), pin_factory=self.factory, clock=clock, emit=self._emit)
        self.inputs.arm(start_thread=False)

    def _emit(self, batch: list[tuple[EventType, str, Stamp, Any]]) -> None:
        self.panics += [stamp for kind, _, stamp, _ in batch if kind is EventType.PANIC]

    def deliver(self, *, happened: float, at: float, pressed: bool) -> None:
        """gpiozero's callback thread reports at ``at`` an edge the kernel saw at ``happened``."""
        self.fake.t = at
        self.factory.pin(PIN).when_changed(self.factory.ticks_at(happened), 0 if pressed else 1)

    def poll(self, at: float) -> None:
        self.fake.t = at
        self.inputs.poll(at)

    def close(self) -> None:
        self.inputs.close()
        self.factory.reset()
        self.factory.close()


def test_inputs__a_press_delivered_late_and_back_to_back_is_recorded_at_its_own_time() -> None:
    rig = Rig()
    try:
        # The kernel saw a 200 ms press; the callback thread ran 250 ms late and delivered both edges at once.
        rig.deliver(happened=sec(10), at=sec(266), pressed=True)
        rig.deliver(happened=sec(215), at=sec(266), pressed=False)
        rig.poll(sec(1024))
        assert len(rig.panics) == 1, "a 200 ms press was judged on callback times, not on its ticks"
        assert rig.panics[0].mono == sec(10)
        assert rig.panics[0].wall == WALL_AT_MONO_ZERO + sec(10), "the event's ts is when the person pressed"
        assert rig.inputs.states()["panic"].state == "ok"
    finally:
        rig.close()


def test_inputs__a_glitch_delivered_late_is_still_a_glitch() -> None:
    rig = Rig()
    try:
        rig.deliver(happened=sec(10), at=sec(266), pressed=True)
        rig.poll(sec(266))
        rig.deliver(happened=sec(30), at=sec(267), pressed=False)
        rig.poll(sec(1024))
        assert rig.panics == []
    finally:
        rig.close()


def test_inputs__a_held_press_delivered_late_waits_debounce_after_delivery_in_case_its_release_is_as_late() -> None:
    rig = Rig()  # debounce 50 ms: 51.2 units
    try:
        rig.deliver(happened=sec(10), at=sec(266), pressed=True)
        rig.poll(sec(266 + 51))
        assert rig.panics == [], "its release, if any, may still be on its way"
        rig.poll(sec(266 + 52))
        assert [p.mono for p in rig.panics] == [sec(10)]
    finally:
        rig.close()


def test_inputs__a_wall_clock_step_before_delivery_moves_the_ts_with_the_clock_and_no_edge_in_time() -> None:
    rig = Rig()
    try:
        rig.deliver(happened=sec(10), at=sec(20), pressed=True)
        rig.deliver(happened=sec(110), at=sec(120), pressed=False)
        rig.wall_step = -3600.0  # NTP steps the wall clock back an hour
        rig.deliver(happened=sec(300), at=sec(556), pressed=True)
        rig.deliver(happened=sec(500), at=sec(556), pressed=False)
        rig.poll(sec(1024))
        assert [p.mono for p in rig.panics] == [sec(10), sec(300)]
        assert rig.panics[0].wall == WALL_AT_MONO_ZERO + sec(10)
        assert rig.panics[1].wall == WALL_AT_MONO_ZERO - 3600.0 + sec(300), "the ts reads the clock as it is now"
    finally:
        rig.close()


@pytest.mark.parametrize(
    ("edges", "panic_at", "wrap"),
    [
        pytest.param([(500, 500, True), (400, 600, False)], 500, True, id="release_before_its_press"),
        pytest.param([(800, 700, True)], 700, True, id="ahead_of_a_wrapping_counter_so_an_hour_old"),
        pytest.param([(800, 700, True)], 700, False, id="in_the_future"),
        pytest.param([(-100_000, 720, True)], 720, True, id="before_arming"),
    ],
)
def test_inputs__ticks_that_put_an_edge_before_the_previous_one_or_in_the_future_give_way_to_the_callback_time(
    edges: list[tuple[int, int, bool]], panic_at: int, wrap: bool
) -> None:
    """Each edge is (ticks' time, delivered at, pressed), in units; a release judged at delivery held 100 units."""
    rig = Rig(wrap=wrap)
    try:
        for happened, at, pressed in edges:
            rig.deliver(happened=sec(happened), at=sec(at), pressed=pressed)
        rig.poll(sec(1024))
        assert [p.mono for p in rig.panics] == [sec(panic_at)]
        assert rig.panics[0].wall == WALL_AT_MONO_ZERO + sec(panic_at)
    finally:
        rig.close()


def test_inputs__ticks_none_give_the_callback_time() -> None:
    rig = Rig()
    try:
        rig.fake.t = sec(500)
        rig.factory.pin(PIN).when_changed(None, 0)
        rig.poll(sec(1024))
        assert [p.mono for p in rig.panics] == [sec(500)]
    finally:
        rig.close()


delay = st.one_of(st.integers(0, 400), st.integers(0, 2**21))  # up to 34 min: well within the counter's wrap


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 400),
    length=st.integers(1, 400),
    press_delay=delay,
    release_delay=delay,
    catch_up=st.integers(0, 50),
    polls=st.lists(st.tuples(st.sampled_from(["start", "press", "release"]), st.integers(0, 400)), max_size=8),
    offset=st.integers(0, WRAP - 1),
    step=st.tuples(st.integers(0, 2**22), st.sampled_from([0.0, -3600.0, 7200.0])),
    debounce_ms=st.sampled_from([0, 20, 50]),
)
def test_inputs__a_press_late_by_any_delay_is_recorded_once_at_its_own_time_if_it_held(
    start: int,
    length: int,
    press_delay: int,
    release_delay: int,
    catch_up: int,
    polls: list[tuple[str, int]],
    offset: int,
    step: tuple[int, float],
    debounce_ms: int,
) -> None:
    """Any delivery delay, polls at any moments, a wall-clock step at any moment, the tick counter wrapping anywhere.

    A press that held ``debounce_ms`` is one panic stamped when it began (wall:
    the clock as it read at its delivery, less its age); a shorter one is none,
    provided the callback thread, once it delivers the press, gets to the
    release within ``debounce_ms`` (``catch_up``), as it does when it works off a
    backlog.  Held longer between the two, the press is judged on delivery
    times, as all presses were before ticks were used.
    """
    held = length * 1000 >= debounce_ms * UNIT
    press, release = start, start + length
    press_at = press + press_delay
    if held:
        release_at = max(release + release_delay, press_at)
    else:  # the callback thread catches up: the release comes less than debounce_ms after the press
        release_at = max(release, press_at + min(catch_up, (debounce_ms * UNIT - 1) // 1000))
    step_at, step_s = step
    end = max(release_at, step_at) + UNIT
    anchors = {"start": 0, "press": press_at, "release": release_at}  # polls near the deliveries find the races
    timeline = [(p, 0, "poll") for a, k in polls if (p := anchors[a] + k) <= end]
    timeline += [(step_at, 1, "step"), (press_at, 2, "press"), (release_at, 3, "release")]
    rig = Rig(debounce_ms=debounce_ms, offset=offset)
    try:
        for t, _, what in sorted(timeline):
            if what == "poll":
                rig.poll(sec(t))
            elif what == "step":
                rig.wall_step = step_s
            else:
                happened = press if what == "press" else release
                rig.deliver(happened=sec(happened), at=sec(t), pressed=what == "press")
        rig.poll(sec(end))
        if not held:
            assert rig.panics == []
            return
        stepped = step_s if step_at <= press_at else 0.0
        assert [p.mono for p in rig.panics] == [sec(press)]
        assert rig.panics[0].wall == WALL_AT_MONO_ZERO + sec(press) + stepped
        assert rig.inputs.states()["panic"].state == "ok"
    finally:
        rig.close()


def test_ticks__the_factory_is_asked_outside_the_inputs_lock() -> None:
    """pigpio's ticks() is a round trip to its daemon: under the lock, every poll would wait for it (a review)."""
    rig = Rig()
    held: list[bool] = []
    ticks = rig.factory.ticks

    def watched() -> int:
        held.append(rig.inputs._cond._is_owned())  # type: ignore[attr-defined]
        return ticks()

    rig.factory.ticks = watched  # type: ignore[method-assign]
    rig.deliver(happened=sec(0), at=sec(1), pressed=True)
    assert held == [False]
