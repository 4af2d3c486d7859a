"""Property-based: any edges, any processing delays, exactly the presses a person held long enough.

The model is written out in :func:`expected`: the raw level is a sequence of
segments; a segment that lasts ``debounce`` or longer at a level other than
the stable one is an accepted change, stamped with the first edge away from
the stable level since the last segment that held; a short one is a glitch.
The debouncer alone, and the whole inputs pipeline on mock pins with a fake
clock, must agree with it whatever the moments at which they are polled:
edges queued behind a slow commit are judged on their own stamps.

Times are integers in units of 1/1024 s, so float arithmetic is exact and
"held exactly debounce" is tested where it can be (the pure debouncer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config.model import Contact, InputConfig, InputKind
from agent.debounce import Debouncer
from agent.events import EventType, Stamp
from agent.inputs import Inputs
from tests.support.clocks import FakeTime

UNIT = 1024  # time units per second
T0 = 1000.0  # monotonic seconds at unit 0


def sec(units: int) -> float:
    return T0 + units / UNIT


def expected(edge_times: list[int], end: int, *, holds: Callable[[int], bool]) -> list[tuple[bool, int]]:
    """Accepted changes (new level, unit time of the first edge) for edges toggling from False.

    ``holds(duration_units)`` says whether a segment that long counts.
    """
    stable, first = False, None
    out = []
    for k, t in enumerate(edge_times):
        level = k % 2 == 0  # the edges toggle: press, release, press, ...
        seg_end = edge_times[k + 1] if k + 1 < len(edge_times) else end
        if holds(seg_end - t):
            if level != stable:
                out.append((level, first if first is not None else t))
                stable = level
            first = None
        elif level != stable and first is None:
            first = t
    return out


gaps = st.lists(st.integers(1, 300), max_size=14)


@settings(max_examples=400, deadline=None)
@given(
    gaps=gaps,
    polls=st.lists(st.integers(0, 5000), max_size=12),
    tail=st.integers(0, 300),
    db_units=st.sampled_from([0, 1, 20, 64, 100]),
)
def test_debouncer__agrees_with_the_model_whatever_the_poll_times(
    gaps: list[int], polls: list[int], tail: int, db_units: int
) -> None:
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    end = (times[-1] if times else 0) + tail
    d = Debouncer(db_units / UNIT, initial=False)
    got: list[tuple[bool, int]] = []
    fed = 0
    for p in [*sorted(x for x in polls if x <= end), end]:
        while fed < len(times) and times[fed] <= p:  # what the queue holds when this poll runs
            before = d.stable
            first = d.edge(level=fed % 2 == 0, stamp=Stamp(wall=0.0, mono=sec(times[fed]), synced=True))
            if first is not None:
                got.append((not before, round((first.mono - T0) * UNIT)))
            fed += 1
        before = d.stable
        first = d.settle(sec(p))
        if first is not None:
            got.append((not before, round((first.mono - T0) * UNIT)))
    assert got == expected(times, end, holds=lambda n: n >= db_units)


presses = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 300)), max_size=24)


@settings(max_examples=150, deadline=None)
@given(
    steps=presses,
    polls=st.lists(st.integers(0, 8000), max_size=10),
    tail=st.integers(0, 300),
    debounce_ms=st.sampled_from([0, 20, 50]),
)
def test_inputs__pipeline_records_exactly_the_held_presses(
    steps: list[tuple[str, int]], polls: list[int], tail: int, debounce_ms: int
) -> None:
    """Two buttons, edges at any moments, polls at any moments (a slow commit delays them all)."""
    from gpiozero.pins.mock import MockFactory

    mock_factory = MockFactory()  # one per example: a fixture would be shared between them
    mono = FakeTime(T0)  # one per example: a fixture would be shared between them
    clock = mono.clock()
    got: list[tuple[str, float]] = []

    def emit(batch: list[tuple[EventType, str, Stamp, Any]]) -> None:
        got.extend((source, stamp.mono) for kind, source, stamp, _ in batch if kind is EventType.PANIC)

    pins = {"a": 5, "b": 6}
    cfgs = tuple(
        InputConfig(
            name=n,
            kind=InputKind.PANIC_BUTTON,
            pin=p,
            contact=Contact.NORMALLY_OPEN,
            debounce_ms=debounce_ms,
            stuck_after_s=0,
            silent=False,
        )
        for n, p in pins.items()
    )
    inputs = Inputs(cfgs, pin_factory=mock_factory, clock=clock, emit=emit)
    inputs.arm(start_thread=False)
    pressed = dict.fromkeys(pins, False)
    try:
        edges: dict[str, list[int]] = {"a": [], "b": []}
        clock_units = 0
        timeline: list[tuple[int, int, str]] = []  # (time, order, what): polls sort before edges at a tie
        for name, gap in steps:
            clock_units += gap
            edges[name].append(clock_units)
            timeline.append((clock_units, 1, name))
        end = clock_units + tail
        timeline += [(p, 0, "poll") for p in polls if p <= end]
        for t, _, what in sorted(timeline):
            mono.t = sec(t)
            if what == "poll":
                inputs.poll(mono.t)
                continue
            pressed[what] = not pressed[what]
            pin = mock_factory.pin(pins[what])
            pin.drive_low() if pressed[what] else pin.drive_high()  # a pressed button pulls its pin low
        mono.t = sec(end)
        inputs.poll(mono.t)

        def holds(n: int) -> bool:
            return n * 1000 >= debounce_ms * UNIT

        for name in pins:
            model = expected(edges[name], end, holds=holds)
            want = [sec(first) for level, first in model if level]
            assert [m for s, m in got if s == name] == want, f"input {name}: edges {edges[name]}, end {end}"
            stable = model[-1][0] if model else False
            assert inputs.states()[name].state == ("active" if stable else "ok")
    finally:
        inputs.close()
        mock_factory.reset()
        mock_factory.close()
