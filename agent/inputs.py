"""Panic buttons and tamper switches on GPIO: debounce, contact type, supervision.

Wiring (BCM numbering, internal pull-up on): one side of the switch to the pin,
the other to ground.

* ``normally_open`` (a push button): the pin reads low while pressed.
* ``normally_closed`` (a supervised loop or an enclosure switch): the pin reads
  low at rest and high when the contact opens, so a cut wire reads as active,
  never as silently idle.

gpiozero's callback thread only records the raw edge with its time stamp and
returns; the debounce (our own: gpiozero's mock pins ignore ``bounce_time``),
the stuck-input and flapping supervision (one input's rules: :mod:`agent.watched_input`)
and the durable put run on this module's thread.  An edge is accepted once
the level has been stable for ``debounce_ms``; the event keeps the time of the
first edge, i.e. when the person pressed.

The stamp is the edge's own time (gpiozero's ``ticks``, when lgpio or pigpio
saw it), not the time the callback runs: that thread can run late (the GIL, a
loaded CPU) and then deliver a press and its release back to back.  Where the
ticks cannot tell (RPi.GPIO, the mock, an implausible value) the callback's
time stands in.  A level is accepted no sooner than ``debounce_ms`` after its
edge was delivered, since the edge that ends it may be as late.

Queued edges are replayed on their own time stamps, never on the time this
thread gets round to them: while a commit stalls (an SD card's fsync, a
locked outbox), a press and its release may both wait in the queue, and the
press still counts if it held ``debounce_ms`` between its two edges.

On :meth:`Inputs.close` the thread stops, then a last poll runs: queued edges
are applied, and a level still within its debounce is waited for (at most
``debounce_ms``) and recorded if it held by its own stamps, so a press made
during shutdown is recorded before the outbox closes.  A press still held at
stop is recorded once it has held ``debounce_ms``; if it is still held at the
next start it is recorded again there ("active at start"): at worst one alarm
twice, never none.  A thread stuck in a commit is waited for at most
:data:`_CLOSE_JOIN_S`; then the last poll is skipped, with an error naming the
commit and the edges left, so the rest of the stop (the recorder, the state
file, the outbox) still runs within systemd's ``TimeoutStopSec``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.closing import Closing
from agent.config.model import Contact, InputConfig
from agent.errors import HardwareError
from agent.events import Clock, Stamp
from agent.pins import edge_age, edge_stamp, is_mock
from agent.watched_input import InputState, Item, WatchedInput

log = logging.getLogger(__name__)

# Returns what may wait (agent/recorder.py, record_deferring), or None.
Emit = Callable[[list[Item]], Callable[[], None] | None]
_IDLE_S = 10.0  # longest sleep with nothing to do: often enough for the watchdog (20 s), rare enough to idle cheaply
_ERROR_PAUSE_S = 0.5  # after a failed poll: retry soon, but never spin
_CLOSE_JOIN_S = 5.0  # close() waits this long for a poll stuck in a commit; well under TimeoutStopSec=15s
LATER_S = 0.005  # the thread runs what may wait this long after a poll: the PUBLISH has travelled by then


class Inputs(Closing):
    """Arms the configured inputs and turns their debounced changes into events.

    Args:
        configs: the ``inputs`` section.
        pin_factory: from :func:`agent.pins.make_pin_factory`.
        clock: stamps edges; its ``mono`` drives debounce and stuck timers.
        emit: called on this module's thread with the list of (type, input name,
            stamp, data) one poll accepted; it must make them durable (one
            commit for the lot) and return what may wait, or None.
        on_change: called after every accepted state change (also a release,
            which is no event), so the status can be republished.

    On the thread, what may wait (the emit's leftovers, ``on_change``) runs
    :data:`LATER_S` after the poll that made it, or after the next poll if an
    edge comes first, so an alarm's delivery has the CPU to itself; a poll
    from outside the thread (:meth:`poll`, the last one at stop) runs it at once.

    """

    def __init__(
        self,
        configs: tuple[InputConfig, ...],
        *,
        pin_factory: Any,
        clock: Clock,
        emit: Emit,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._configs = configs
        self._on_change = on_change
        self._factory = pin_factory
        self._clock = clock
        self._emit = emit
        self._batch: list[Item] = []
        self._changes = 0  # accepted changes in this poll: on_change runs once, after the emit
        self._later: list[Callable[[], None]] = []  # what may wait; swapped under _cond
        self._later_due: float | None = None  # time.monotonic() when it runs (real time: it is about the CPU)
        self._inputs: dict[str, WatchedInput] = {}
        self._cond = threading.Condition()
        self._poll_lock = threading.Lock()  # one poll at a time: the thread's, or close()'s last one
        self._committing: list[Item] = []  # the batch inside the emit, for close()'s error if it is stuck
        self._edges: list[tuple[str, bool, Stamp, float]] = []  # name, pin low, edge's stamp, mono when seen
        self._thread: threading.Thread | None = None
        self._closed = False
        self.progress = clock.mono()

    def arm(self, *, start_thread: bool = True) -> None:
        """Claim the pins and start watching them.

        Raises:
            HardwareError: a pin cannot be claimed, naming the pin and the input.

        """
        # DigitalInputDevice is gpiozero's Button without its hold thread, which wakes 10 times a
        # second per input; stuck inputs are supervised here instead.
        from gpiozero import DigitalInputDevice  # noqa: PLC0415 - gpiozero stays behind this seam

        for cfg in self._configs:
            try:
                button = DigitalInputDevice(cfg.pin, pull_up=True, bounce_time=None, pin_factory=self._factory)
                if is_mock(self._factory) and cfg.contact is Contact.NORMALLY_CLOSED:
                    button.pin.drive_low()  # a simulated loop starts closed, as when wired
            except Exception as exc:
                self.close()
                raise HardwareError(
                    f"inputs: cannot claim GPIO{cfg.pin} for input '{cfg.name}': {exc}; "
                    "check that no other program uses the pin and the user is in the gpio group",
                ) from exc
            item = WatchedInput(cfg, button, self._raw_edge)
            item.last_edge = self._clock.mono()  # no edge of this pin can be older than its arming
            self._inputs[cfg.name] = item
            # The pin's own callback, not the device's when_activated: gpiozero's event layer (value
            # mapping, active-time bookkeeping) cost 65 µs of every press; the debouncer ignores a
            # level reported twice.  The pin keeps only a weak reference: _inputs holds the item.
            # Set before the level is read, so no edge falls between the two.
            button.pin.when_changed = item.pin_changed
            now = self._clock.stamp()
            initial = item.active_from_raw(bool(button.is_active))
            if initial:
                log.warning("input %s (GPIO%d) is active at start; treating it as a new activation", cfg.name, cfg.pin)
                item.debouncer.edge(level=True, stamp=now)
        if start_thread:
            # The thread makes the first poll: polling here as well would race it (two polls at once).
            self._thread = threading.Thread(target=self._run, name="inputs", daemon=True)
            self._thread.start()
        else:
            self.poll(self._clock.mono())

    def _raw_edge(self, item: WatchedInput, *, pin_low: bool, ticks: object) -> None:
        # gpiozero's thread: stamp, queue, notify; nothing else.  Stamped under the lock, so each pin's
        # edges are queued in stamp order and each one is seen at or after the poll that did not take it.
        age = edge_age(item.factory, ticks)  # outside the lock: it may ask the pin daemon (pigpio)
        with self._cond:
            seen = self._clock.stamp()
            stamp = edge_stamp(age, seen=seen, previous=item.last_edge)
            item.last_edge = stamp.mono
            self._edges.append((item.cfg.name, pin_low, stamp, seen.mono))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    break
                if not self._edges and not self._batch:  # a batch kept after a failed emit goes again now
                    self._cond.wait(timeout=self._idle_wait())
            if self.closed:
                break
            try:
                self._poll_once(None)
                if self._later_due is not None and time.monotonic() >= self._later_due:
                    self._run_later()
            except Exception:
                # Whatever failed, the poll kept the edges and the batch; the thread carries on.
                log.exception("inputs: a poll failed; its edges and events are kept and retried")
                with self._cond:
                    self._cond.wait(_ERROR_PAUSE_S)
        self._exit_poll()

    def _exit_poll(self) -> None:
        """One more poll on the way out: close() may have given up on this thread's stuck commit and skipped its own."""
        try:
            self._poll_once(None)
            self._run_later()
        except Exception:
            log.exception("inputs: the poll after a stuck commit at stop failed")

    def _idle_wait(self) -> float:
        """Until the next debounce or stuck deadline, or what may wait is due; at most ``_IDLE_S``.  Hold _cond."""
        wait = self._next_deadline()
        timeout = _IDLE_S if wait is None else max(0.0, min(_IDLE_S, wait - self._clock.mono()))
        if self._later_due is not None:
            timeout = min(timeout, max(0.0, self._later_due - time.monotonic()))
        return timeout

    @property
    def closed(self) -> bool:
        return self._closed

    def _next_deadline(self) -> float | None:
        deadlines = []
        for item in self._inputs.values():
            d = item.debouncer.deadline()
            if d is not None:
                deadlines.append(d)
            due = item.due()  # stuck, or the end of a flapping shutdown
            if due is not None:
                deadlines.append(due)
        return min(deadlines) if deadlines else None

    def poll(self, now: float | None = None) -> None:
        """Apply queued edges and every debounce or stuck timer due at ``now``; record what changed.

        ``now`` defaults to the clock, read after the queue is taken.  If the
        emit raises, the batch is kept and offered again by the next poll.
        What may wait runs before this returns.
        """
        self._poll_once(now)
        self._run_later()

    def _poll_once(self, now: float | None, *, wait_s: float = -1) -> bool:
        """One poll and its emit under the poll lock; False if the lock stayed taken ``wait_s`` (-1: no bound)."""
        if not self._poll_lock.acquire(timeout=wait_s):
            return False
        try:
            self._poll_and_emit(now)
        finally:
            self._poll_lock.release()
        return True

    def _poll_and_emit(self, now: float | None) -> None:
        """Hold _poll_lock."""
        later = None
        try:
            self._poll(now)
        finally:
            batch, self._batch = self._batch, []
            try:
                if batch:
                    self._committing = batch
                    try:
                        later = self._emit(batch)
                    except BaseException:
                        self._batch = batch + self._batch
                        raise
                    finally:
                        self._committing = []
            finally:
                # After the emit: the status never wakes a thread ahead of the alarm.
                changed = self._on_change if self._changes else None
                self._changes = 0
                self._defer([w for w in (later, changed) if w is not None])

    def _defer(self, work: list[Callable[[], None]]) -> None:
        if work:
            with self._cond:
                self._later.extend(work)
                if self._later_due is None:
                    self._later_due = time.monotonic() + LATER_S

    def _run_later(self) -> None:
        with self._cond:
            work, self._later, self._later_due = self._later, [], None
        for fn in work:
            try:
                fn()
            except Exception:
                log.exception("inputs: the work after a poll failed; the events themselves are recorded")

    def _poll(self, at: float | None) -> None:
        with self._cond:
            edges, self._edges = self._edges, []
            now = self._clock.mono() if at is None else at
        self.progress = now
        for n, (name, pin_low, stamp, seen) in enumerate(edges):
            item = self._inputs[name]
            try:
                first = item.debouncer.edge(level=item.active_from_raw(pin_low), stamp=stamp, seen=seen)
                if first is not None:
                    self._changed(item, first)
            except BaseException:
                with self._cond:  # the edges not yet applied go back to the front of the queue
                    self._edges[:0] = edges[n + 1 :]
                raise
        for item in self._inputs.values():
            first = item.debouncer.settle(now)
            if first is not None:
                self._changed(item, first)
            self._check_due(item, now)

    def _changed(self, item: WatchedInput, stamp: Stamp) -> None:
        event = item.accept(stamp)
        if event is not None:
            self._batch.append(event)
        self._changes += 1

    def _check_due(self, item: WatchedInput, now: float) -> None:
        event = item.check_due(now, self._clock)
        if event is not None:
            self._batch.append(event)
            self._changes += 1

    # ---- technician and status helpers ---------------------------------------

    def note_event(self, name: str, ts: str, *, test: bool) -> None:
        item = self._inputs.get(name)
        if item is not None:
            item.note_event(ts, test=test)

    def restore(self, name: str, last_event: str | None, last_test: str | None) -> None:
        """What an earlier run knew (agent-state.json): the status must not forget when a button was last tested."""
        item = self._inputs.get(name)
        if item is not None:
            item.last_event = item.last_event or last_event
            item.last_test = item.last_test or last_test

    def simulate(self, name: str, *, active: bool) -> None:
        """Drive a simulated pin as if the switch were pressed or released.

        Raises:
            HardwareError: pins are real, or no such input.

        """
        if not is_mock(self._factory):
            raise HardwareError("simulate needs gpio.pin_factory: mock; real pins are pressed by hand")
        item = self._inputs.get(name)
        if item is None:
            raise HardwareError(f"no input named '{name}'; configured: {', '.join(self._inputs) or 'none'}")
        item.simulate(active=active)

    def states(self) -> dict[str, InputState]:
        return {name: item.view() for name, item in self._inputs.items()}

    def close(self) -> None:
        """Stop the thread, record what is still queued or debouncing (module doc), release the pins.

        Bounded by :data:`_CLOSE_JOIN_S` (plus ``debounce_ms``) even when the
        thread is stuck in a commit: the rest of the stop must run before systemd's SIGKILL.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + _CLOSE_JOIN_S
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(_CLOSE_JOIN_S)
        try:
            self._last_poll(deadline)
        except Exception:
            log.exception("inputs: the last poll at stop failed")
        for item in self._inputs.values():
            item.button.close()

    def _last_poll(self, deadline: float) -> None:
        if not self._last_poll_once(deadline):
            return
        # A level still within its debounce is waited for (at most debounce_ms), then judged by its stamps.
        due = [d for i in self._inputs.values() if (d := i.debouncer.deadline()) is not None]
        if not due:
            return
        until = max(due)
        left = until - self._clock.mono()
        if 0 < left <= max(i.cfg.debounce_ms for i in self._inputs.values()) / 1000.0:
            with self._cond:
                self._cond.wait_for(lambda: self._clock.mono() >= until, timeout=left)
        self._last_poll_once(deadline)

    def _last_poll_once(self, deadline: float) -> bool:
        """A poll at stop, unless the thread still holds the poll lock at ``deadline``: then log what is stuck."""
        if self._poll_once(None, wait_s=max(0.0, deadline - time.monotonic())):
            self._run_later()
            return True
        committing = self._committing
        with self._cond:
            queued = sorted({name for name, *_ in self._edges})
        stuck = (
            f"its commit of {len(committing)} events ({', '.join(f'{k.value} from {n}' for k, n, *_ in committing)})"
            if committing
            else "its poll"
        )
        log.error(
            "inputs: the last poll at stop is skipped: the inputs thread is still in %s after %.0f s (stuck storage "
            "under the outbox?); those events, and the edges still queued (inputs: %s), are recorded only if it "
            "returns before the process ends; a press still held is recorded again at the next start; "
            "check the SD card and the outbox's log lines",
            stuck,
            _CLOSE_JOIN_S,
            ", ".join(queued) or "none",
        )
        return False

    def _repr_state(self) -> str:
        return ", ".join(f"{n}={i.state()}" for n, i in self._inputs.items())
