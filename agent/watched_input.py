"""One input as the inputs thread watches it: its level, its stuck timer, and what its changes make.

Kept apart from :mod:`agent.inputs` (which owns the pins' claiming, the edge
queue, the thread and its locks) so the rules of a single input read in one
place: which level counts as active for its contact type, the event an
accepted change makes (an alarm, or ``input_restored`` after a fault), when a
level held too long becomes ``input_fault``, when a flapping tamper loop is
shut down (:mod:`agent.flapping`), and how the status shows it.
Nothing here locks or queues; :class:`agent.inputs.Inputs` calls it on its
own thread, except :meth:`WatchedInput.pin_changed` (gpiozero's thread).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.model import Contact, InputConfig, InputKind
from agent.debounce import Debouncer
from agent.events import Clock, EventType, Stamp
from agent.flapping import FlapGuard, Verdict

log = logging.getLogger("agent.inputs")  # the lines an operator reads (and filters on) keep their logger

Item = tuple[EventType, str, Stamp, Mapping[str, Any]]  # one event for the emit: type, input name, stamp, data


@dataclass(frozen=True)
class InputState:
    """One input as the status document and ``campus-agent status`` show it."""

    name: str
    kind: str
    pin: int
    state: str
    active_since: float | None
    last_event: str | None
    last_test: str | None


class WatchedInput:
    """One configured input: its gpiozero device, its debouncer and its supervision.

    Args:
        cfg: the input's config.
        button: its gpiozero device (kept here, never handed out).
        raw_edge: :meth:`agent.inputs.Inputs._raw_edge`, called on gpiozero's thread.

    """

    def __init__(self, cfg: InputConfig, button: Any, raw_edge: Callable[..., None]) -> None:
        self.cfg = cfg
        self.button = button
        self.factory = button.pin_factory  # gpiozero's, also when gpio.pin_factory is "default"
        self._raw_edge = raw_edge
        self.debouncer = Debouncer(cfg.debounce_ms / 1000.0, initial=False)
        self.active_since: float | None = None
        self.faulted = False  # stuck or open loop, until released
        self.flap = (
            FlapGuard(cfg.flap_limit, cfg.flap_window_s)
            if cfg.kind is InputKind.TAMPER and cfg.flap_limit > 0  # a panic button is a person: never limited
            else None
        )
        self.last_event: str | None = None
        self.last_test: str | None = None
        self.last_edge = -math.inf  # monotonic time of the latest edge queued, or of arming; under Inputs._cond

    def pin_changed(self, ticks: object, state: object) -> None:
        """Runs on gpiozero's callback thread; ``ticks`` is the edge's own time, ``state`` its new level (high = 1).

        lgpio reports a watchdog timeout as level 2, which is no edge.
        """
        if state == 0 or state == 1:  # noqa: PLR1714 - a bool is 0 or 1 too; `in (0, 1)` reads as a type test
            self._raw_edge(self, pin_low=not state, ticks=ticks)

    def active_from_raw(self, pin_low: bool) -> bool:
        """Whether the contact is active, given that the pin reads low (``pin_low``) or high."""
        return pin_low if self.cfg.contact is Contact.NORMALLY_OPEN else not pin_low

    @property
    def flapping(self) -> bool:
        """Shut down for flapping: no alarms until it has stayed at rest ``flap_window_s``."""
        return self.flap is not None and self.flap.shut

    def state(self) -> str:
        if self.faulted or self.flapping:
            return "fault"
        return "active" if self.debouncer.stable else "ok"

    def view(self) -> InputState:
        """What the status shows of this input."""
        return InputState(
            name=self.cfg.name,
            kind=self.cfg.kind.value,
            pin=self.cfg.pin,
            state=self.state(),
            active_since=self.active_since,
            last_event=self.last_event,
            last_test=self.last_test,
        )

    def stuck_due(self) -> float | None:
        """Monotonic time the active level becomes a fault; None when no stuck timer runs.

        None also while a release stamped before that time is inside its
        debounce: the release's own deadline wakes the thread, and the
        release, once accepted, ends the press before the limit.
        """
        if self.active_since is None or self.faulted or self.flapping or self.cfg.stuck_after_s <= 0:
            return None
        due = self.active_since + self.cfg.stuck_after_s
        release = self.debouncer.pending()
        return None if release is not None and release.mono < due else due

    def due(self) -> float | None:
        """Monotonic time of this input's next timer (stuck, or the end of a flapping shutdown); None if none."""
        times = [t for t in (self.stuck_due(), self.restore_due()) if t is not None]
        return min(times) if times else None

    def check_due(self, now: float, clock: Clock) -> Item | None:
        """The event a timer due by monotonic ``now`` makes (:meth:`check_stuck`, :meth:`check_restore`)."""
        return self.check_stuck(now, clock) or self.check_restore(now, clock)

    def accept(self, stamp: Stamp) -> Item | None:
        """The debouncer accepted a change at ``stamp``: the event it makes, if any (a release makes none)."""
        name = self.cfg.name
        if self.debouncer.stable:
            self.active_since = stamp.mono
            log.debug("input %s active (GPIO%d)", name, self.cfg.pin)  # the 'recorded' line follows at INFO
            return self._activated(stamp)
        held = stamp.mono - (self.active_since or stamp.mono)
        self.active_since = None
        quiet = logging.DEBUG if self.flapping else logging.INFO  # a loose wire must not fill the journal
        log.log(quiet, "input %s released after %.2f s", name, held)
        if self.flap is not None and self.flap.shut:
            self.flap.released(stamp.mono)
            return None
        if self.faulted:
            self.faulted = False
            return (EventType.INPUT_RESTORED, name, stamp, {"held_s": round(held, 3)})
        return None

    def _activated(self, stamp: Stamp) -> Item | None:
        """The alarm an activation makes, or the flapping fault instead, or nothing while shut down."""
        verdict = Verdict.ALARM if self.flap is None else self.flap.activation(stamp.mono)
        if verdict is Verdict.ALARM:
            kind = EventType.PANIC if self.cfg.kind is InputKind.PANIC_BUTTON else EventType.TAMPER
            return (kind, self.cfg.name, stamp, {"pin": self.cfg.pin, "contact": self.cfg.contact.value})
        if verdict is Verdict.SILENT or self.flap is None:
            return None
        log.error(
            "input %s (GPIO%d) opened %d times in %.1f s and again: flapping; no further alarms from it until it "
            "has stayed at rest for %.0f s; check the loop's wiring for a loose wire or a worn contact",
            self.cfg.name,
            self.cfg.pin,
            self.flap.limit,
            self.flap.span_s(stamp.mono),
            self.flap.window_s,
        )
        data = {"reason": "flapping", "alarms": self.flap.limit, "window_s": self.flap.window_s}
        return (EventType.INPUT_FAULT, self.cfg.name, stamp, data)

    def restore_due(self) -> float | None:
        """Monotonic time a flapping shutdown ends if the input stays at rest; None when it cannot yet.

        None also while an activation stamped before that time is inside its
        debounce: its own deadline wakes the thread, and once accepted it ends the quiet.
        """
        due = None if self.flap is None or self.active_since is not None else self.flap.restore_due()
        pending = self.debouncer.pending()
        return None if due is None or (pending is not None and pending.mono < due) else due

    def check_restore(self, now: float, clock: Clock) -> Item | None:
        """The ``input_restored`` ending a flapping shutdown once the input stayed at rest ``flap_window_s``."""
        due = self.restore_due()
        if self.flap is None or due is None or now < due:
            return None
        held = self.flap.restore()
        log.info("input %s at rest for %.0f s: no longer flapping, alarms again", self.cfg.name, self.flap.window_s)
        stamp = Stamp(wall=clock.wall(), mono=now, synced=clock.synced())
        return (EventType.INPUT_RESTORED, self.cfg.name, stamp, {"held_s": round(held, 3)})

    def check_stuck(self, now: float, clock: Clock) -> Item | None:
        """The ``input_fault`` event if the level has been active ``stuck_after_s`` by monotonic ``now``; once.

        Judged by the release's stamp, not ``now``, while a release is inside
        its debounce (:meth:`stuck_due`): a press let go just before the limit
        is no fault.
        """
        if self.active_since is None or self.stuck_due() is None or now - self.active_since < self.cfg.stuck_after_s:
            return None
        self.faulted = True
        nc = self.cfg.contact is Contact.NORMALLY_CLOSED
        reason = "open_loop" if nc else "stuck"
        log.error(
            "input %s (GPIO%d) has been active for %.0f s: %s; no further alarms from it until it returns; "
            "check the %s",
            self.cfg.name,
            self.cfg.pin,
            now - self.active_since,
            reason.replace("_", " "),
            "wiring for a cut or loose wire" if nc else "button for a jam",
        )
        stamp = Stamp(wall=clock.wall(), mono=now, synced=clock.synced())
        data = {"reason": reason, "active_s": round(now - self.active_since, 3)}
        return (EventType.INPUT_FAULT, self.cfg.name, stamp, data)

    def note_event(self, ts: str, *, test: bool) -> None:
        """An event of this input was recorded at ``ts``; a test press is also its last test."""
        self.last_event = ts
        if test:
            self.last_test = ts

    def simulate(self, *, active: bool) -> None:
        """Drive the (mock) pin as the switch would, pressed or released."""
        pin_low = active if self.cfg.contact is Contact.NORMALLY_OPEN else not active
        pin = self.button.pin
        pin.drive_low() if pin_low else pin.drive_high()
