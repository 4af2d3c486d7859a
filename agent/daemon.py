"""Wiring the parts together: start/stop order, signals, and the watchdog.

Start order puts the button first: the outbox is opened, the recorder built
and the inputs are armed before anything touches the network, and systemd
hears ``READY=1`` then, not when a broker answers; a Pi that boots offline
still records every press.  Then the uplink, the heartbeat, the cameras and
the control socket start.

Stop order, each part closed once even if another fails: the control socket,
the cameras, the heartbeat, the uplink (``offline``/``shutdown`` while
connected), the photo queue, the transmission figures, the indicators, then
the inputs, whose last poll records what is still queued or debouncing, then
the photo requests of a start that failed before the photos were built
(reported ``stopped``), then the recorder, which stores what it still holds
in memory, then the pin factory, the state file, the outbox and, last, the
instance lock (agent/instance.py: taken before anything else at start, so an
agent turned away because another runs on the same outbox touches nothing
and stops nothing of the other's).  SIGTERM only sets a
:class:`~agent.stopflag.StopFlag` (a ``threading.Event`` can deadlock in a
signal handler); every wait in the stop path is bounded.

What the agent answers from outside (the control socket's requests, the
centre's commands) is :mod:`agent.handlers`, and what a recorded event does to
the other parts (and the state file) is :mod:`agent.buttonpath`; this module
only wires them in.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from agent.buttonpath import ButtonPath
from agent.chores import Chores
from agent.closing import Closing
from agent.config.model import Config
from agent.control import ControlServer
from agent.errors import HardwareError
from agent.events import Clock
from agent.handlers import Handlers
from agent.health import Health, Heartbeat, StatusSources
from agent.indicators import Indicators
from agent.inputs import Inputs
from agent.instance import InstanceLock
from agent.notices import Notices
from agent.notify import Notifier
from agent.outbox import Outbox
from agent.pins import close_pin_factory, make_pin_factory
from agent.recorder import Recorder
from agent.statefile import StateFile
from agent.stopflag import StopFlag
from agent.testmode import TestMode
from agent.transmission import Transmission
from agent.uplink import LinkState, Uplink

log = logging.getLogger(__name__)

_STATUS_EVERY_S = 10.0
_STALL_AFTER_S = 20.0  # twice the 10 s idle wake-ups of every watched thread (docs/architecture.md)
_SERVE_TICK_S = 10.0  # without a systemd watchdog; with one, half its interval


class Agent(ButtonPath, Closing):
    """One running agent: owns every part and the order they start and stop in."""

    def __init__(self, cfg: Config, *, clock: Clock | None = None, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.notifier = notifier or Notifier()
        self.test_mode, self._test_was = TestMode(self.clock), False
        self.outbox: Outbox | None = None
        self.recorder: Recorder | None = None
        self.inputs: Inputs | None = None
        self.uplink: Uplink | None = None
        self.transmission = Transmission(
            cfg.outbox.path.with_name("link-stats.json"),
            wall=self.clock.wall,
            mono=self.clock.mono,
            save_every_s=cfg.heartbeat.interval_s,
            synced=self.clock.synced,
        )
        # Built now, started later: its changed() is safe to call from the first press on, no guards.
        self.heartbeat = Heartbeat(
            interval_s=cfg.heartbeat.interval_s,
            mono=self.clock.mono,
            publish=lambda: self.uplink.publish_status(self.status_doc()) if self.uplink else None,
            ticks=[self._watch_test_mode, self.save_state, self.transmission.save],
        )
        self.control: ControlServer | None = None
        self.health: Health | None = None
        self.handlers = Handlers(self)  # control requests and the centre's commands (agent/handlers.py)
        self.indicators: Indicators | None = None
        self.cameras: Any = None  # agent.cameras.Cameras, imported only when cameras are configured
        self.photos: Any = None  # agent.photos.Photos, imported only when an input names a camera to photograph
        self._photo_wait = [] if cfg.snapshots.enabled else None  # alarms before photos is built (buttonpath)
        self._photo_lock = threading.Lock()
        self._indicators_ok = False
        self._silent = {i.name: i.silent for i in cfg.inputs}
        self.notices = Notices(
            cfg,
            wall=self.clock.wall,
            mono=self.clock.mono,
            held=lambda: self.recorder.held_count() if self.recorder is not None else 0,
            outputs=lambda: self.indicators.failing() if self.indicators is not None else [],
        )
        self._factory: Any = None
        self._stop = StopFlag()  # set by signal handlers: no lock (agent/stopflag.py)
        self._stopped = False
        self._instance = InstanceLock(cfg.outbox.path)
        self._state = StateFile(cfg.outbox.path.with_name("agent-state.json"))
        self._state_lock = threading.Lock()
        self.chores = Chores()  # the state file after a command from the centre (agent/chores.py)
        self._start_reason = "boot"
        self._run_from_seq = 1
        # The sender's allowance: one connection holds it for at most two connect timeouts, TCP and TLS sharing
        # one (however many addresses the name has: agent/addresses.py), the CONNACK the other.
        self.stall_after_s = max(_STALL_AFTER_S, 2 * cfg.mqtt.connect_timeout_s + 5.0)

    # ---- start and stop ----------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        self._instance.acquire()  # before anything is opened: a second agent touches nothing of the first's
        before = self._state.load()
        self.outbox = Outbox(
            cfg.outbox.path,
            site=cfg.device.site,
            device=cfg.device.id,
            max_mb=cfg.outbox.max_mb,
            wall=self.clock.wall,
            mono=self.clock.mono,
            seq_mark=before.last_seq,
            intake=cfg.outbox.intake,
        )
        self._run_from_seq = self.outbox.top_seq() + 1  # seqs from here on were recorded by this process
        self._start_reason = "restart" if before.boot_id == self.clock.boot_id else "boot"
        self._resume_test_mode(before)  # before the inputs are armed: a press at start is judged right
        self.recorder = Recorder(
            self.outbox,
            clock=self.clock,
            site=cfg.device.site,
            device=cfg.device.id,
            test_mode=self.test_mode.active_at,
            hooks=self._recorder_hooks(),
        )
        self._factory = make_pin_factory(cfg.gpio.pin_factory)
        self.indicators = Indicators(cfg.outputs, pin_factory=self._factory, mono=self.clock.mono)
        self.inputs = Inputs(
            cfg.inputs,
            pin_factory=self._factory,
            clock=self.clock,
            emit=self.recorder.record_deferring,
            on_change=self.heartbeat.changed,
        )
        self._carry_alarms(before)  # before any press: the indicators rank a press after the carried alarms
        self.inputs.arm()
        for name, last_event, last_test in before.inputs:
            self.inputs.restore(name, last_event, last_test)
        try:
            self.indicators.start()
            self._indicators_ok = True
        except HardwareError as exc:
            # Feedback is lost, alarms are not: carry on and say so in every status.
            log.error("%s; running without LED/buzzer feedback", exc)  # noqa: TRY400 - the message says it all
            self.notices.hardware.append(f"LED/buzzer unavailable: {exc}")
        self._record_started()
        if cfg.cameras:
            from agent.cameras import Cameras  # noqa: PLC0415 - a post without cameras does not pay for them

            self.cameras = Cameras(
                cfg.cameras, clock=self.clock, emit=self.recorder.record, on_change=self.heartbeat.changed
            )
        if cfg.snapshots.enabled:
            from agent.photos import Photos  # noqa: PLC0415 - posts without photos do not pay for them

            photos = Photos(
                cfg,
                wake=lambda: self.uplink.wake() if self.uplink else None,
                on_failed=self._snapshot_failed,
                wall=self.clock.wall,
                locks=self.cameras.locks() if self.cameras is not None else None,
            )
            self._photos_built(photos)  # with the requests of alarms recorded since the inputs were armed
        self.uplink = Uplink(
            cfg.mqtt,
            topic_root=cfg.topic_root,
            outbox=self.outbox,
            status=self.status_doc,
            offline=self._offline_doc,
            on_command=self.handlers.command,
            on_link=self._on_link,
            on_delivered=self._delivered,
            held=self.recorder.held,
            photos=self.photos.drain if self.photos is not None else None,
            wall=self.clock.wall,
            mono=self.clock.mono,
        )
        self.health = Health(
            site=cfg.device.site,
            device=cfg.device.id,
            clock=self.clock,
            outbox=self.outbox,
            sources=StatusSources(
                link=self.uplink.state,
                inputs=self.inputs.states,
                cameras=self.cameras.states if self.cameras is not None else dict,
                commands=self.handlers.command_counters,
                outputs=self.indicators.patterns if self._indicators_ok else None,
                warnings=self.notices.lines,
                link_stats=self.transmission.snapshot,
                photos=self.photos.status if self.photos is not None else None,
                held=self.recorder.held,
            ),
            test_mode=self.test_mode,
            heartbeat_s=cfg.heartbeat.interval_s,
        )
        self.uplink.start()
        self.heartbeat.start()
        if self.cameras is not None:
            self.cameras.start()
        if self.photos is not None:
            self.photos.start()
        self.notices.cert_warning()  # before the control socket answers: a status must never see it half-read
        self.control = ControlServer(cfg.control.socket, self.handlers.control())
        self.control.start()
        if cfg.mqtt.tls is not None and not cfg.mqtt.tls.check_hostname:
            log.warning(
                "TLS host name checking is OFF (mqtt.tls.check_hostname: false): any certificate from "
                "the campus CA is accepted as the broker; use this only in a lab"
            )
        pending = self.outbox.pending()
        self.notifier.ready(f"inputs armed; outbox open, {pending} pending; connecting to {cfg.mqtt.brokers[0]}")
        log.info(
            "agent %s/%s started: %d inputs armed, outbox %s (%d pending), broker %s",
            cfg.device.site,
            cfg.device.id,
            len(cfg.inputs),
            cfg.outbox.path,
            pending,
            ", ".join(str(b) for b in cfg.mqtt.brokers),
        )

    def stop(self) -> None:
        """Stop every part in the order the module docstring gives; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if not self._instance.held:  # turned away at the start (another agent runs): nothing here is ours
            self._stop.close()
            return
        self.notifier.stopping()
        closers: list[tuple[str, Callable[[], None] | None]] = [
            ("control", self.control.close if self.control is not None else None),
            ("cameras", self.cameras.close if self.cameras is not None else None),
            ("heartbeat", self.heartbeat.close),
            ("uplink", self.uplink.stop if self.uplink is not None else None),
            ("photos", self.photos.close if self.photos is not None else None),
            ("transmission figures", self.transmission.close),
            ("indicators", self.indicators.close if self.indicators is not None else None),
            ("inputs", self.inputs.close if self.inputs is not None else None),
            ("photo requests of a failed start", self._photos_never_came),
            # After the uplink (no command, and its save, comes after this) and the inputs (their last
            # poll's snapshot_failed reports are recorded here, off their thread), before the recorder.
            ("chores", self.chores.close),
            ("recorder", self.recorder.close if self.recorder is not None else None),
            ("pin factory", lambda: close_pin_factory(self._factory)),
            ("state file", self.save_state),
            ("outbox", self.outbox.close if self.outbox is not None else None),
            ("instance lock", self._instance.release),
        ]
        for name, close in closers:
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.exception("stopping the %s failed; carrying on with shutdown", name)
        log.info("agent stopped")
        self._stop.close()

    def close(self) -> None:
        """Same as :meth:`stop`: the resource-owner spelling, for ``with Agent(cfg) as agent``."""
        self.stop()

    @property
    def closed(self) -> bool:
        return self._stopped

    def _repr_id(self) -> str:
        return f"{self.cfg.device.site}/{self.cfg.device.id}"

    def _repr_state(self) -> str:
        if self.outbox is None or self.recorder is None:
            return "not started"
        return f"running pending={self.outbox.pending()} held={self.recorder.held_count()}"

    def run(self) -> int:
        """Start, then serve until SIGTERM/SIGINT, feeding the watchdog while healthy."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        try:
            self.start()
            self.serve()
        finally:
            self.stop()
        return 0

    def serve(self) -> None:
        """Feed the watchdog until asked to stop (the main thread's job once started)."""
        interval = min(self.notifier.watchdog_interval or _SERVE_TICK_S, _SERVE_TICK_S)
        next_status = self.clock.mono() + _STATUS_EVERY_S
        while not self._stop.wait(interval):
            self._feed_watchdog()
            if self.clock.mono() >= next_status:
                next_status = self.clock.mono() + _STATUS_EVERY_S
                self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        """One line for ``systemctl status``: link and outbox depth."""
        link = self.uplink.state() if self.uplink is not None else None
        pending = self.outbox.pending() if self.outbox is not None else 0
        if link is not None and link.connected:
            return f"connected to {link.broker}; {pending} events pending"
        reason = link.last_error if link is not None and link.last_error else "connecting"
        return f"broker unreachable ({reason}); {pending} events buffered"

    def request_stop(self) -> None:
        self._stop.set()

    # ---- what the other parts call back ------------------------------------------

    def status_doc(self) -> dict[str, Any]:
        return self.health.status() if self.health is not None else {}

    def _offline_doc(self, reason: str) -> dict[str, Any]:
        if self.health is None:
            raise RuntimeError("health is built before the uplink starts")
        return self.health.offline(reason)

    def _on_link(self, state: LinkState) -> None:
        self.transmission.link(state.connected, state.broker)
        if self.indicators is not None:
            self.indicators.link(state.connected)
        self.notifier.status(self._status_line())
        self.heartbeat.changed()

    def _watch_test_mode(self) -> None:
        now = self.test_mode.active()
        if now != self._test_was:
            self._test_was = now
            self.heartbeat.changed()

    # ---- watchdog -----------------------------------------------------------------------

    def stalled(self) -> list[str]:
        """Names of threads that have made no progress for longer than their allowance.

        Only the sender waits on the network (a connect attempt), so only it
        gets ``stall_after_s``; every other thread wakes at least every 10 s
        and is held to 20 s (or to ``stall_after_s`` if lower): a stuck inputs
        thread records no press, and must not be hidden for minutes behind the
        broker's connect timeout.  A camera worker shows progress while it
        waits on a probe (every 0.25 s), so a long probe needs no allowance.
        """
        now = self.clock.mono()
        others = min(self.stall_after_s, _STALL_AFTER_S)
        parts = {
            "uplink-sender": (self.uplink, self.stall_after_s),
            "heartbeat": (self.heartbeat, others),
            "inputs": (self.inputs, others),
            "indicators": (self.indicators, others),
            "cameras": (self.cameras, others),
        }
        return [name for name, (p, limit) in parts.items() if p is not None and now - p.progress > limit]

    def _feed_watchdog(self) -> None:
        stalled = self.stalled()
        if stalled:
            log.error("threads not making progress: %s; not feeding the watchdog", ", ".join(stalled))
            self.notifier.status(f"stalled: {', '.join(stalled)}")
            return
        self.notifier.watchdog()
