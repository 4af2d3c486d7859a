"""Feedback for the person who pressed: an acknowledge LED and a buzzer.

Wiring (BCM numbering; both outputs optional, each under ``outputs`` with
``pin`` and ``active_high``):

* ``ack_led``: GPIO pin → 330 Ω resistor → LED anode, LED cathode → ground,
  with ``active_high: true`` (the default).  For an LED that the pin sinks
  (3V3 → resistor → LED → pin) or a low-trigger driver module, set
  ``active_high: false``: the pin is then driven low to light it.
* ``buzzer``: an *active* buzzer (it has its own oscillator; a passive one
  only clicks) between the pin and ground, ``active_high: true``.  A buzzer
  drawing more than about 10 mA goes through a transistor (NPN, 1 kΩ base
  resistor from the pin).  The common 3-pin buzzer modules are low-trigger:
  set ``active_high: false`` for them, and check the module pulls its input
  up: when the agent stops, the pin is released as an input with no pull.

Patterns, each output running its own from the moment it started:

============  ===================================  ===============================
pattern       ack_led                              buzzer
============  ===================================  ===============================
idle          0.05 s flash every 5 s (armed)       off
sending       4 Hz blink (0.125 s on / 0.125 off)  one 0.1 s chirp
sent          1 Hz blink (0.5 s on / 0.5 off)      two 0.1 s chirps, 0.1 s apart
acknowledged  steady on                            one 1 s tone
fault         double flash every 2 s (0.1 s each)  off
============  ===================================  ===============================

First match wins: ``acknowledged`` for ``ack_hold_s`` after the centre's first
ack of the newest alarm (the outputs follow the newest alarm: an ack of an
older one, late or replayed, changes nothing, neither tone nor hold);
``sending`` while any recorded alarm is undelivered (each new press restarts
it: another chirp); ``sent`` for ``sent_hold_s`` (120 s) after a delivery, or
until the ack of that alarm or of a newer one (the presser heard the newest
acknowledged: an older press going back to ``sent`` would say the centre has
not seen it); ``fault`` once the broker has been unreachable for longer than
``fault_after_s`` (counted from start if it never connected); else ``idle``.
A shorter outage stays ``idle``: a blip must not alarm anyone.  An ack counts
as delivery (the centre has the alarm).  Silent inputs are silent end to end:
the buzzer's pattern is computed from audible alarms only, so neither their
press nor their ack sounds it; the LED still shows them.

Callers (the inputs thread, the uplink sender, the command handler) only update
state under a lock (the alarms' bookkeeping: :mod:`agent.recent_alarms`) and
wake this module's one thread, which computes each output's level with
:func:`level` and touches a pin only when it changes.  A write that fails is
tried again within ``_RETRY_S`` (a buzzer left sounding, or an LED left
steady, says the wrong thing) and the output is named by
:meth:`Indicators.failing` until a write succeeds, for the status warnings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.closing import Closing
from agent.config.model import OutputConfig, OutputsConfig
from agent.errors import HardwareError
from agent.patterns import BUZZER as _BUZZER
from agent.patterns import LED as _LED
from agent.patterns import Pattern, level, next_edge
from agent.recent_alarms import RecentAlarms, Restart

log = logging.getLogger(__name__)

SENT_HOLD_S = 120.0
_MAX_WAIT_S = 10.0  # longest sleep without an edge due: news wakes the thread; the watchdog allows 20 s
_RETRY_S = 0.2  # a failed pin write is tried again this soon: a 1 s tone must not become a 10 s one


@dataclass
class _Output:
    """One output: its config, its gpiozero device once claimed, and what the thread last did."""

    name: str
    cfg: OutputConfig
    device: Any = None
    pattern: Pattern | None = None
    since: float = 0.0
    generation: int = 0
    applied: bool | None = None
    failed: bool = False

    @property
    def audible_only(self) -> bool:
        return self.name == _BUZZER


class Indicators(Closing):
    """Runs the LED and buzzer patterns from alarm, delivery, ack and link news.

    Args:
        cfg: the ``outputs`` section; an output left out is simply not driven.
        pin_factory: from :func:`agent.pins.make_pin_factory`.
        mono: monotonic clock in seconds; tests pass a fake one and call :meth:`tick`.
        sent_hold_s: how long ``sent`` runs after a delivery when no ack comes, seconds.

    Every public method is thread-safe and returns at once; none touches a pin
    except :meth:`tick`, :meth:`start` and :meth:`close`.

    """

    def __init__(
        self,
        cfg: OutputsConfig,
        *,
        pin_factory: Any,
        mono: Callable[[], float] = time.monotonic,
        sent_hold_s: float = SENT_HOLD_S,
    ) -> None:
        self._cfg = cfg
        self._factory = pin_factory
        self._mono = mono
        self._outputs = [_Output(n, c) for n, c in ((_LED, cfg.ack_led), (_BUZZER, cfg.buzzer)) if c is not None]
        self._cond = threading.Condition()
        self._tick_lock = threading.Lock()
        self._alarms = RecentAlarms(ack_hold_s=cfg.ack_hold_s, sent_hold_s=sent_hold_s)
        self._generations: Counter[tuple[bool, Pattern]] = Counter()
        self._connected = False
        self._down_since = mono()
        self._dirty = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._progress = mono()

    @property
    def progress(self) -> float:
        """Monotonic time of the thread's last loop; now, when there is nothing to drive."""
        return self._progress if self._thread is not None else self._mono()

    def start(self, *, start_thread: bool = True) -> None:
        """Claim the output pins (all off) and start the indicator thread.

        Args:
            start_thread: False in tests that drive :meth:`tick` with a fake clock.

        Raises:
            HardwareError: a pin cannot be claimed, naming the pin and the output;
                pins already claimed are released and the object is closed.

        """
        from gpiozero import LED, Buzzer  # noqa: PLC0415 - gpiozero stays behind this seam

        for out in self._outputs:
            cls, cfg = (LED if out.name == _LED else Buzzer), out.cfg
            try:
                out.device = cls(cfg.pin, active_high=cfg.active_high, initial_value=False, pin_factory=self._factory)
            except Exception as exc:
                self.close()
                raise HardwareError(
                    f"outputs.{out.name}: cannot claim GPIO{cfg.pin}: {exc}; "
                    "check that no other program uses the pin and the user is in the gpio group",
                ) from exc
            out.applied = False
        if start_thread and self._outputs:
            self._thread = threading.Thread(target=self._run, name="indicators", daemon=True)
            self._thread.start()

    # ---- news from the other threads: update state, wake the thread, return ----------

    def alarm_recorded(self, event_id: str, *, silent: bool) -> None:
        """An alarm was made durable; ``silent`` keeps the buzzer out of it.

        The recorder says so a few milliseconds after the PUBLISH left, so the
        PUBACK (or even the centre's ack) may have come first: the alarm then
        starts from what is already known, never from ``sending`` again.
        """
        with self._cond:
            self._bump(self._alarms.recorded(event_id, silent=silent))

    def alarm_carried(self, event_id: str, *, silent: bool) -> None:
        """An alarm of the last run, delivered then and not known to be acknowledged: its ack may still come.

        Carried as delivered, with its ``sent`` hold already over: the restart
        cannot tell when its PUBACK came (the state file keeps ids only), and
        an alarm of hours ago must not blink as if just sent, nor chirp.  So
        the outputs stay as they are until the centre's ack, which then shows
        as it would have without the restart (if this is still the newest
        alarm), and an older ack changes nothing.
        """
        with self._cond:
            self._alarms.carried(event_id, silent=silent, now=self._mono())

    def alarm_delivered(self, event_id: str) -> None:
        """The broker acknowledged the alarm (PUBACK); repeats are ignored, an id not yet recorded is kept."""
        with self._cond:
            if self._alarms.delivered(event_id, self._mono()):
                self._wake()

    def acknowledged(self, event_id: str) -> bool:
        """The centre acknowledged ``event_id``; True if it is a recent alarm of ours.

        The ack pattern runs only on an output for which this is the newest
        alarm (the buzzer counts audible alarms only), and only for the first
        ack of an alarm: a repeat, or a late ack of an older press, neither
        sounds the tone again nor extends the hold.
        """
        with self._cond:
            ours, restart = self._alarms.acknowledged(event_id, self._mono())
            self._bump(restart)
            return ours

    def link(self, connected: bool) -> None:
        """The broker connection came up or went down."""
        with self._cond:
            if connected != self._connected:
                self._connected = connected
                self._down_since = self._mono()
                self._wake()

    def failing(self) -> list[str]:
        """The outputs whose last pin write failed, e.g. ``["ack_led on GPIO22"]`` (any thread).

        The presser's feedback is then wrong or missing while the status still
        shows the pattern meant; :class:`agent.notices.Notices` turns this into
        a warning.  Read without a lock: each flag is one bool, written by the
        indicator thread only.
        """
        if self._closed:
            return []
        return [f"{o.name} on GPIO{o.cfg.pin}" for o in self._outputs if o.failed and o.device is not None]

    def patterns(self) -> dict[str, dict[str, str]]:
        """The status section: ``{"ack_led": {"pattern": "sent"}, ...}`` for configured outputs."""
        now = self._mono()
        with self._cond:
            return {o.name: {"pattern": self._pattern(now, audible_only=o.audible_only).value} for o in self._outputs}

    # ---- the indicator thread --------------------------------------------------------

    def tick(self, now: float) -> None:
        """Set every output to its level at monotonic time ``now`` (seconds)."""
        self._tick(now)

    def _tick(self, now: float) -> float:
        """Apply the levels at ``now``; return when something next changes."""
        with self._tick_lock:
            self._progress = now
            wanted: list[tuple[_Output, bool]] = []
            with self._cond:
                wake = min(now + _MAX_WAIT_S, self._next_state_change(now))
                for out in self._outputs:
                    pattern = self._pattern(now, audible_only=out.audible_only)
                    gen = self._generations[(out.audible_only, pattern)]
                    if pattern != out.pattern or gen != out.generation:
                        out.pattern, out.since, out.generation = pattern, now, gen
                    edge = next_edge(out.name, pattern, now - out.since)
                    if edge is not None:
                        wake = min(wake, out.since + edge)
                    wanted.append((out, level(out.name, pattern, now - out.since)))
            for out, on in wanted:
                if (on != out.applied or out.failed) and out.device is not None:  # a failed write left it unknown
                    self._drive(out, on=on)
            if any(o.failed for o in self._outputs):
                wake = min(wake, now + _RETRY_S)
            return wake

    def _drive(self, out: _Output, *, on: bool) -> None:
        try:
            out.device.on() if on else out.device.off()
            out.applied = on
            out.failed = False
        except Exception:
            if not out.failed:
                log.exception("cannot switch %s (GPIO%d); will keep trying", out.name, out.cfg.pin)
            out.failed = True

    def _run(self) -> None:
        while True:
            try:
                wake = self._tick(self._mono())
            except Exception:
                log.exception("indicator tick failed; retrying in %.0f s", _MAX_WAIT_S)
                wake = self._mono() + _MAX_WAIT_S
            with self._cond:
                if not self._dirty and not self._closed:
                    self._cond.wait(timeout=min(_MAX_WAIT_S, max(0.0, wake - self._mono())))
                self._dirty = False
                if self._closed:
                    return

    # ---- state, read and written under self._cond ------------------------------------------

    def _wake(self) -> None:
        self._dirty = True
        self._cond.notify_all()

    def _bump(self, restart: Restart | None) -> None:
        """Restart a pattern from its beginning (a new chirp) on the outputs named (the LED sees every alarm)."""
        if restart is None:
            return
        if restart.led:
            self._generations[(False, restart.pattern)] += 1
        if restart.buzzer:
            self._generations[(True, restart.pattern)] += 1
        self._wake()

    def _pattern(self, now: float, *, audible_only: bool) -> Pattern:
        """The pattern of one output: the LED sees every alarm, the buzzer audible ones only."""
        shown = self._alarms.pattern(now, audible_only=audible_only)
        if shown is not None:
            return shown
        if not self._connected and now - self._down_since > self._cfg.fault_after_s:
            return Pattern.FAULT
        return Pattern.IDLE

    def _next_state_change(self, now: float) -> float:
        """The next time a pattern may change by the clock alone (ack or sent hold ends, fault starts)."""
        fault = [] if self._connected else [self._down_since + self._cfg.fault_after_s]
        return min([self._alarms.next_change(now), *(t for t in fault if t > now)])

    # ---- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread, switch every output off and release the pins; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        with self._tick_lock:
            for out in (o for o in self._outputs if o.device is not None):
                try:
                    try:
                        out.device.off()
                    finally:  # a pin that cannot be switched off is still released
                        out.device.close()
                except Exception:
                    log.exception("cannot release %s (GPIO%d)", out.name, out.cfg.pin)
                out.device, out.applied, out.failed = None, None, False

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_state(self) -> str:
        return ", ".join(f"{n}={p['pattern']}" for n, p in self.patterns().items()) or "no outputs"
