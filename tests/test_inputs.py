"""Inputs: our own debounce on a fake clock, contact types and supervision on mock pins."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.config.model import Contact, InputConfig, InputKind
from agent.debounce import Debouncer
from agent.errors import HardwareError
from agent.events import Clock, EventType, Stamp
from agent.inputs import LATER_S, Emit, Inputs
from tests.support.clocks import FakeTime
from tests.support.waiting import eventually


def st(t: float) -> Stamp:
    return Stamp(wall=1.7e9 + t, mono=t, synced=True)


def test_debouncer__press_accepted_after_stable_period_with_first_edge_time() -> None:
    d = Debouncer(0.05, initial=False)
    d.edge(level=True, stamp=st(10.0))
    d.edge(level=False, stamp=st(10.002))  # contact bounce
    d.edge(level=True, stamp=st(10.004))
    assert d.settle(10.03) is None
    assert d.deadline() == pytest.approx(10.054)
    got = d.settle(10.054)
    assert got is not None
    assert got.mono == 10.0, "the event is stamped when the person pressed, not when debounce ended"
    assert d.stable is True


def test_debouncer__glitch_shorter_than_debounce_is_dropped() -> None:
    d = Debouncer(0.05, initial=False)
    d.edge(level=True, stamp=st(1.0))
    d.edge(level=False, stamp=st(1.01))
    assert d.settle(1.2) is None
    assert d.stable is False
    assert d.deadline() is None


def test_debouncer__zero_debounce_accepts_at_once() -> None:
    d = Debouncer(0.0, initial=False)
    d.edge(level=True, stamp=st(5.0))
    assert d.settle(5.0) is not None


def test_debouncer__release_is_debounced_too() -> None:
    d = Debouncer(0.05, initial=True)
    d.edge(level=False, stamp=st(2.0))
    d.edge(level=True, stamp=st(2.01))
    d.edge(level=False, stamp=st(2.02))
    assert d.settle(2.06) is None
    assert d.settle(2.071) is not None
    assert d.stable is False


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[EventType, str, Stamp, dict[str, Any]]] = []
        self.batches: list[int] = []
        self.lock = threading.Lock()  # the inputs' thread writes, the test reads

    def __call__(self, batch: list[tuple[EventType, str, Stamp, Any]]) -> None:
        with self.lock:
            self.batches.append(len(batch))
            for kind, source, stamp, data in batch:
                self.events.append((kind, source, stamp, dict(data)))

    def kinds(self) -> list[tuple[str, str]]:
        return [(k.value, s) for k, s, _, _ in self.events]

    def wait(self, n: int, timeout: float = 5.0) -> None:
        eventually(lambda: len(self.events) >= n, timeout, lambda: f"{n} events; got {self.kinds()}")


def cfg(
    name: str = "panic",
    pin: int = 17,
    *,
    kind: InputKind = InputKind.PANIC_BUTTON,
    contact: Contact = Contact.NORMALLY_OPEN,
    debounce_ms: int = 50,
    stuck_after_s: float = 0,
) -> InputConfig:
    return InputConfig(
        name=name,
        kind=kind,
        pin=pin,
        contact=contact,
        debounce_ms=debounce_ms,
        stuck_after_s=stuck_after_s,
        silent=False,
    )


@pytest.fixture
def fake_clock(fake_time: FakeTime) -> tuple[FakeTime, Clock]:
    return fake_time, fake_time.clock(synced=False)


def test_inputs__press_on_mock_pin_is_one_panic_after_debounce(
    mock_factory: Any, fake_clock: tuple[FakeTime, Clock]
) -> None:
    mono, clock = fake_clock
    rec = Recorder()
    inputs = Inputs((cfg(),), pin_factory=mock_factory, clock=clock, emit=rec)
    inputs.arm(start_thread=False)
    pin = mock_factory.pin(17)
    pin.drive_low()  # pressed: normally open button closes to ground
    mono.t += 0.01
    pin.drive_high()  # bounce
    mono.t += 0.001
    pin.drive_low()
    inputs.poll(mono.t)
    assert rec.events == []
    mono.t += 0.06
    inputs.poll(mono.t)
    assert rec.kinds() == [("panic", "panic")]
    assert rec.events[0][2].mono == pytest.approx(1000.0)
    assert inputs.states()["panic"].state == "active"
    pin.drive_high()
    mono.t += 0.06
    inputs.poll(mono.t)
    assert inputs.states()["panic"].state == "ok"
    assert rec.kinds() == [("panic", "panic")], "a release is not an alarm"
    inputs.close()


def test_inputs__the_pins_own_callback_takes_levels_0_and_1_and_ignores_lgpio_s_watchdog_level(
    mock_factory: Any, fake_clock: tuple[FakeTime, Clock]
) -> None:
    """The inputs take gpiozero's Pin.when_changed (ticks, level); lgpio reports a watchdog timeout as level 2."""
    mono, clock = fake_clock
    rec = Recorder()
    inputs = Inputs((cfg(debounce_ms=0),), pin_factory=mock_factory, clock=clock, emit=rec)
    inputs.arm(start_thread=False)
    callback = mock_factory.pin(17).when_changed
    callback(0, 2)  # no edge: a pressed button would otherwise be read as released, or the reverse
    callback(0, 0)  # low: pressed
    inputs.poll(mono.t)
    callback(0, 2)
    mono.t += 0.01
    inputs.poll(mono.t)
    assert rec.kinds() == [("panic", "panic")]
    assert inputs.states()["panic"].state == "active"
    callback(0, True)  # the mock's level is a bool
    inputs.poll(mono.t)
    assert inputs.states()["panic"].state == "ok"
    inputs.close()


def test_inputs__normally_closed_cut_wire_is_active(mock_factory: Any, fake_clock: tuple[FakeTime, Clock]) -> None:
    mono, clock = fake_clock
    rec = Recorder()
    tamper = cfg("lid", 27, kind=InputKind.TAMPER, contact=Contact.NORMALLY_CLOSED, debounce_ms=0)
    inputs = Inputs((tamper,), pin_factory=mock_factory, clock=clock, emit=rec)
    inputs.arm(start_thread=False)
    assert inputs.states()["lid"].state == "ok", "a closed loop at rest is ok"
    mock_factory.pin(27).drive_high()  # the loop opens: lid lifted or wire cut
    inputs.poll(mono.t)
    assert rec.kinds() == [("tamper", "lid")]
    assert inputs.states()["lid"].state == "active"
    inputs.close()


def test_inputs__stuck_gives_one_fault_no_more_alarms_then_restored(
    mock_factory: Any, fake_clock: tuple[FakeTime, Clock]
) -> None:
    mono, clock = fake_clock
    rec = Recorder()
    inputs = Inputs((cfg(debounce_ms=0, stuck_after_s=10),), pin_factory=mock_factory, clock=clock, emit=rec)
    inputs.arm(start_thread=False)
    pin = mock_factory.pin(17)
    pin.drive_low()
    inputs.poll(mono.t)
    for _ in range(30):  # held down for 30 s, polled every second
        mono.t += 1
        inputs.poll(mono.t)
    assert rec.kinds() == [("panic", "panic"), ("input_fault", "panic")]
    assert rec.events[1][3]["reason"] == "stuck"
    assert inputs.states()["panic"].state == "fault"
    pin.drive_high()
    mono.t += 0.5
    inputs.poll(mono.t)
    assert rec.kinds()[-1] == ("input_restored", "panic")
    assert inputs.states()["panic"].state == "ok"
    inputs.close()


def test_inputs__open_loop_fault_reason(mock_factory: Any, fake_clock: tuple[FakeTime, Clock]) -> None:
    mono, clock = fake_clock
    rec = Recorder()
    c = cfg(contact=Contact.NORMALLY_CLOSED, debounce_ms=0, stuck_after_s=5)
    inputs = Inputs((c,), pin_factory=mock_factory, clock=clock, emit=rec)
    inputs.arm(start_thread=False)
    mock_factory.pin(17).drive_high()
    inputs.poll(mono.t)
    mono.t += 6
    inputs.poll(mono.t)
    assert rec.kinds() == [("panic", "panic"), ("input_fault", "panic")]
    assert rec.events[1][3]["reason"] == "open_loop"
    inputs.close()


def test_inputs__thread_delivers_press_with_real_time(mock_factory: Any) -> None:
    rec = Recorder()
    inputs = Inputs((cfg(debounce_ms=20),), pin_factory=mock_factory, clock=Clock(synced=lambda: False), emit=rec)
    inputs.arm()
    try:
        inputs.simulate("panic", active=True)
        rec.wait(1)
        assert rec.kinds() == [("panic", "panic")]
    finally:
        inputs.close()


def test_inputs__simulate_refused_on_real_pins_and_unknown_names(mock_factory: Any) -> None:
    inputs = Inputs((cfg(),), pin_factory=mock_factory, clock=Clock(synced=lambda: False), emit=Recorder())
    inputs.arm(start_thread=False)
    with pytest.raises(HardwareError, match="no input named 'desk'; configured: panic"):
        inputs.simulate("desk", active=True)
    inputs._factory = object()
    with pytest.raises(HardwareError, match="simulate needs gpio.pin_factory: mock"):
        inputs.simulate("panic", active=True)
    inputs._factory = mock_factory
    inputs.close()
    inputs.close()
    assert repr(inputs) == "<Inputs closed>"


def test_inputs__pin_claimed_twice_names_pin_and_input(mock_factory: Any) -> None:
    clock = Clock(synced=lambda: False)
    first = Inputs((cfg(),), pin_factory=mock_factory, clock=clock, emit=Recorder())
    first.arm(start_thread=False)
    second = Inputs((cfg("desk"),), pin_factory=mock_factory, clock=clock, emit=Recorder())
    with pytest.raises(HardwareError, match="cannot claim GPIO17 for input 'desk'"):
        second.arm(start_thread=False)
    first.close()


def test_inputs__every_state_change_notifies_even_a_release(
    mock_factory: Any, fake_clock: tuple[FakeTime, Clock]
) -> None:
    mono, clock = fake_clock
    changes: list[str] = []
    inputs = Inputs(
        (cfg(debounce_ms=0),),
        pin_factory=mock_factory,
        clock=clock,
        emit=Recorder(),
        on_change=lambda: changes.append(inputs.states()["panic"].state),
    )
    inputs.arm(start_thread=False)
    mock_factory.pin(17).drive_low()
    inputs.poll(mono.t)
    mock_factory.pin(17).drive_high()
    inputs.poll(mono.t)
    assert changes == ["active", "ok"]
    inputs.close()


def test_inputs__edges_queued_before_one_poll_are_emitted_as_one_batch(
    mock_factory: Any, fake_clock: tuple[FakeTime, Clock]
) -> None:
    """Group commit: a burst on several inputs becomes one durable put, not one fsync per press."""
    mono, clock = fake_clock
    rec = Recorder()
    pins = (5, 6, 12, 13)
    inputs = Inputs(
        tuple(cfg(f"p{p}", p, debounce_ms=0) for p in pins), pin_factory=mock_factory, clock=clock, emit=rec
    )
    inputs.arm(start_thread=False)
    for p in pins:
        mock_factory.pin(p).drive_low()
    inputs.poll(mono.t)
    assert rec.batches == [4]
    assert sorted(s for _, s, _, _ in rec.events) == ["p12", "p13", "p5", "p6"]
    inputs.close()


def test_inputs__press_and_release_queued_behind_a_slow_commit_still_count(
    mock_factory: Any, fake_clock: tuple[FakeTime, Clock]
) -> None:
    """Issue 9 item 1: both edges wait in the queue; the press held 300 ms by its own stamps."""
    mono, clock = fake_clock
    rec = Recorder()
    inputs = Inputs((cfg(debounce_ms=50),), pin_factory=mock_factory, clock=clock, emit=rec)
    inputs.arm(start_thread=False)
    pin = mock_factory.pin(17)
    pin.drive_low()
    mono.t += 0.3
    pin.drive_high()
    mono.t += 2.7  # the thread was stuck in a commit all this while
    inputs.poll(mono.t)
    assert rec.kinds() == [("panic", "panic")]
    assert rec.events[0][2].mono == pytest.approx(1000.0)
    assert inputs.states()["panic"].state == "ok"
    inputs.close()


def test_inputs__close_records_queued_and_debouncing_edges(
    mock_factory: Any, fake_clock: tuple[FakeTime, Clock]
) -> None:
    mono, clock = fake_clock
    rec = Recorder()
    inputs = Inputs(
        (cfg("a", 5, debounce_ms=50), cfg("b", 6, debounce_ms=50)), pin_factory=mock_factory, clock=clock, emit=rec
    )
    inputs.arm(start_thread=False)
    mock_factory.pin(5).drive_low()  # queued, never polled: held 60 ms by its stamps at stop
    mono.t += 0.06
    inputs.close()
    assert rec.kinds() == [("panic", "a")]


def test_inputs__close_waits_out_a_press_still_within_debounce(mock_factory: Any) -> None:
    rec = Recorder()
    inputs = Inputs((cfg(debounce_ms=150),), pin_factory=mock_factory, clock=Clock(synced=lambda: False), emit=rec)
    inputs.arm()
    inputs.simulate("panic", active=True)  # still held, 150 ms not yet over when stop begins
    inputs.close()
    assert rec.kinds() == [("panic", "panic")], "a press made during shutdown must be recorded"


def test_inputs__arm_leaves_polling_to_the_inputs_thread(mock_factory: Any) -> None:
    """Issue 9 item 8: arm() must not poll on the caller's thread while the inputs thread polls."""
    threads: list[str] = []

    class Watched(Inputs):
        def _poll_once(self, now: float | None, *, wait_s: float = -1) -> bool:  # every poll, the thread's and poll()'s
            threads.append(threading.current_thread().name)
            return super()._poll_once(now, wait_s=wait_s)

    rec = Recorder()
    inputs = Watched((cfg(debounce_ms=0),), pin_factory=mock_factory, clock=Clock(synced=lambda: False), emit=rec)
    inputs.arm()
    try:
        inputs.simulate("panic", active=True)
        rec.wait(1)
        assert set(threads) == {"inputs"}, threads
    finally:
        inputs.close()


def test_inputs__thread_survives_failures_and_keeps_the_batch(
    mock_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9 item 5: a failing emit or callback is logged with its traceback; nothing is dropped."""
    rec = Recorder()
    failures = {"emit": 1, "on_change": 1}

    def emit(batch: list[tuple[EventType, str, Stamp, Any]]) -> None:
        if failures["emit"]:
            failures["emit"] -= 1
            raise RuntimeError("disk on fire")
        rec(batch)

    def on_change() -> None:
        if failures["on_change"]:
            failures["on_change"] -= 1
            raise RuntimeError("status builder broke")

    inputs = Inputs(
        (cfg(debounce_ms=0),),
        pin_factory=mock_factory,
        clock=Clock(synced=lambda: False),
        emit=emit,
        on_change=on_change,
    )
    inputs.arm()
    try:
        inputs.simulate("panic", active=True)
        rec.wait(1)
        inputs.simulate("panic", active=False)
        inputs.simulate("panic", active=True)
        rec.wait(2)
        assert rec.kinds() == [("panic", "panic"), ("panic", "panic")]
        assert inputs._thread is not None
        assert inputs._thread.is_alive()
        assert "disk on fire" in caplog.text
        assert "Traceback" in caplog.text
    finally:
        inputs.close()


class Steps:
    """What an emit and its leftovers did, in order, with the thread and the time of each."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, float]] = []

    def note(self, what: str) -> None:
        with self.lock:
            self.seen.append((what, threading.current_thread().name, time.monotonic()))

    def names(self) -> list[str]:
        with self.lock:
            return [w for w, _, _ in self.seen]

    def emit(self, batch: list[tuple[EventType, str, Stamp, Any]]) -> Callable[[], None]:
        self.note("emit")
        return lambda: self.note("later")

    def inputs(self, factory: Any, emit: Emit | None = None, *, changed: bool = True) -> Inputs:
        """One panic input without debounce, noting its emits, their leftovers and (``changed``) on_change."""
        return Inputs(
            (cfg(debounce_ms=0),),
            pin_factory=factory,
            clock=Clock(synced=lambda: False),
            emit=emit or self.emit,
            on_change=(lambda: self.note("changed")) if changed else None,
        )


def test_inputs__what_may_wait_runs_after_the_poll_on_the_thread(mock_factory: Any) -> None:
    """The emit's leftovers (log line, LED, status) and on_change run LATER_S after the poll, not inside it."""
    steps = Steps()
    inputs = steps.inputs(mock_factory)
    inputs.arm()
    try:
        inputs.simulate("panic", active=True)
        eventually(lambda: "changed" in steps.names(), 5.0, lambda: str(steps.names()))
        assert steps.names() == ["emit", "later", "changed"]
        (_, emit_thread, emitted), (_, later_thread, later_at), _ = steps.seen
        assert emit_thread == later_thread == "inputs"
        assert later_at - emitted >= LATER_S
    finally:
        inputs.close()


def test_inputs__an_edge_during_the_wait_is_polled_before_what_waits(mock_factory: Any) -> None:
    """A second press that comes while the first one's leftovers wait is recorded first."""
    steps = Steps()
    pressed_again = threading.Event()

    def emit(batch: list[tuple[EventType, str, Stamp, Any]]) -> Callable[[], None]:
        later = steps.emit(batch)
        if not pressed_again.is_set():
            pressed_again.set()
            inputs.simulate("panic", active=False)  # on this thread: the edges queue for the next poll
            inputs.simulate("panic", active=True)
        return later

    inputs = steps.inputs(mock_factory, emit, changed=False)
    inputs.arm()
    try:
        inputs.simulate("panic", active=True)
        eventually(lambda: steps.names().count("later") == 2, 5.0, lambda: str(steps.names()))
        assert steps.names() == ["emit", "emit", "later", "later"]
    finally:
        inputs.close()


def test_inputs__poll_and_close_run_what_waits_before_they_return(mock_factory: Any) -> None:
    steps = Steps()
    inputs = steps.inputs(mock_factory)
    inputs.arm(start_thread=False)
    inputs.simulate("panic", active=True)
    inputs.poll()
    assert steps.names() == ["emit", "later", "changed"]
    inputs.close()

    steps = Steps()
    inputs = steps.inputs(mock_factory, changed=False)
    inputs.arm()
    inputs.simulate("panic", active=True)
    inputs.close()  # at once: whether the thread or the last poll recorded it, its leftovers ran
    assert steps.names() == ["emit", "later"]
