"""Wiring the parts together: start/stop order, signals, and the watchdog.

Start order puts the button first: the outbox is opened and the inputs are
armed before anything touches the network, and systemd hears ``READY=1``
then, not when a broker answers; a Pi that boots offline still records every
press.  Stop order is the reverse, with the inputs closed last so a press
during shutdown is still recorded for the next start.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from agent.commands import CommandHandler
from agent.config.model import Config
from agent.control import ControlServer
from agent.errors import CommandError, ConfigError, HardwareError, OutboxError
from agent.events import Clock, Event, EventType, Stamp
from agent.health import Health, Heartbeat, StatusSources, TestMode
from agent.indicators import Indicators
from agent.inputs import Inputs
from agent.notify import Notifier
from agent.outbox import Outbox, OutboxRow
from agent.pins import close_pin_factory, make_pin_factory
from agent.statefile import State, StateFile
from agent.uplink import LinkState, Uplink

log = logging.getLogger(__name__)

_RECENT = 50
_UNSAVED_MAX = 10_000
_STATUS_EVERY_S = 10.0
_SERVE_TICK_S = 5.0


class Agent:
    """One running agent: owns every part and the order they start and stop in."""

    def __init__(self, cfg: Config, *, clock: Clock | None = None, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.notifier = notifier or Notifier()
        self.test_mode = TestMode(self.clock)
        self.outbox: Outbox | None = None
        self.inputs: Inputs | None = None
        self.uplink: Uplink | None = None
        self.heartbeat: Heartbeat | None = None
        self.control: ControlServer | None = None
        self.health: Health | None = None
        self.commands: CommandHandler | None = None
        self.indicators: Indicators | None = None
        self.cameras: Any = None  # agent.cameras.Cameras, imported only when cameras are configured
        self._indicators_ok = False
        self._hardware_warnings: list[str] = []
        self._silent = {i.name: i.silent for i in cfg.inputs}
        self._cert_checked: float | None = None
        self._cert_note: str | None = None
        self._factory: Any = None
        self._recent: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        self._unsaved: deque[Event] = deque(maxlen=_UNSAVED_MAX)
        self._record_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = False
        self._state = StateFile(cfg.outbox.path.with_name("agent-state.json"))
        self._start_reason = "boot"
        self.stall_after_s = max(20.0, 2 * cfg.mqtt.connect_timeout_s + 5.0)

    # ---- start and stop ----------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        before = self._state.load()
        self.outbox = Outbox(
            cfg.outbox.path, site=cfg.device.site, device=cfg.device.id, max_mb=cfg.outbox.max_mb,
            wall=self.clock.wall, mono=self.clock.mono, seq_floor=self._state.seq_floor(before),
        )
        self._start_reason = "restart" if before.boot_id == self.clock.boot_id else "boot"
        self._factory = make_pin_factory(cfg.gpio.pin_factory)
        self.indicators = Indicators(cfg.outputs, pin_factory=self._factory, mono=self.clock.mono)
        self.inputs = Inputs(cfg.inputs, pin_factory=self._factory, clock=self.clock, emit=self.record_many,
                             on_change=lambda: self.heartbeat.changed() if self.heartbeat is not None else None)
        self.inputs.arm()
        try:
            self.indicators.start()
            self._indicators_ok = True
        except HardwareError as exc:
            # Feedback is lost, alarms are not: carry on and say so in every status.
            log.error("%s; running without LED/buzzer feedback", exc)  # noqa: TRY400 - the message says it all
            self._hardware_warnings.append(f"LED/buzzer unavailable: {exc}")
        self._record_started()
        self.commands = CommandHandler(
            on_ack=self._cmd_ack,
            on_ping=lambda: self.heartbeat.changed() if self.heartbeat is not None else None,
            on_test_mode=self._cmd_test_mode,
            reply=lambda doc: self.uplink.publish("reply", doc) if self.uplink is not None else None,
            rate_per_min=cfg.commands.rate_per_min,
            wall=self.clock.wall,
            mono=self.clock.mono,
        )
        self.uplink = Uplink(
            cfg.mqtt,
            topic_root=cfg.topic_root,
            outbox=self.outbox,
            status=self._status_doc,
            offline=self._offline_doc,
            on_command=self.commands.handle,
            on_link=self._on_link,
            on_delivered=self._on_delivered,
            wall=self.clock.wall,
            mono=self.clock.mono,
        )
        if cfg.cameras:
            from agent.cameras import Cameras  # noqa: PLC0415 - a post without cameras does not pay for them

            self.cameras = Cameras(
                cfg.cameras, clock=self.clock, emit=self.record,
                on_change=lambda: self.heartbeat.changed() if self.heartbeat is not None else None,
            )
        self.health = Health(
            site=cfg.device.site, device=cfg.device.id, clock=self.clock, outbox=self.outbox,
            sources=StatusSources(
                link=self.uplink.state, inputs=self.inputs.states,
                cameras=self.cameras.states if self.cameras is not None else dict,
                commands=self.commands.counters,
                outputs=self.indicators.patterns if self._indicators_ok else None,
                warnings=self._warnings,
            ),
            test_mode=self.test_mode,
        )
        self.heartbeat = Heartbeat(
            interval_s=cfg.heartbeat.interval_s,
            publish=lambda: self.uplink.publish_status(self._status_doc()) if self.uplink else None,
            mono=self.clock.mono,
            ticks=[self._retry_unsaved, self._watch_test_mode(), self._save_state],
        )
        self.uplink.start()
        self.heartbeat.start()
        if self.cameras is not None:
            self.cameras.start()
        self.control = ControlServer(cfg.control.socket, self._control_handlers())
        self.control.start()
        self._cert_warning()
        if cfg.mqtt.tls is not None and not cfg.mqtt.tls.check_hostname:
            log.warning("TLS host name checking is OFF (mqtt.tls.check_hostname: false): any certificate from "
                        "the campus CA is accepted as the broker; use this only in a lab")
        pending = self.outbox.pending()
        self.notifier.ready(f"inputs armed; outbox open, {pending} pending; connecting to {cfg.mqtt.brokers[0]}")
        log.info(
            "agent %s/%s started: %d inputs armed, outbox %s (%d pending), broker %s",
            cfg.device.site, cfg.device.id, len(cfg.inputs), cfg.outbox.path, pending,
            ", ".join(str(b) for b in cfg.mqtt.brokers),
        )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.notifier.stopping()
        for part in (self.cameras, self.control, self.heartbeat, self.uplink):
            if part is not None:
                try:
                    part.stop() if isinstance(part, (Heartbeat, Uplink)) else part.close()
                except Exception:
                    log.exception("stopping %r failed; carrying on with shutdown", part)
        if self.indicators is not None:
            self.indicators.close()
        if self.inputs is not None:
            self.inputs.close()
        close_pin_factory(self._factory)
        if self.outbox is not None:
            self._save_state()
            self.outbox.close()
        log.info("agent stopped")

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

    # ---- the button's path ---------------------------------------------------------

    def record(self, type: EventType, source: str, stamp: Stamp, data: Mapping[str, Any]) -> None:  # noqa: A002
        """Make one event durable, then wake the sender (cameras, agent_started)."""
        self.record_many([(type, source, stamp, data)])

    def record_many(self, items: list[tuple[EventType, str, Stamp, Mapping[str, Any]]]) -> None:
        """Make events durable in one commit (one fsync), then wake the sender once.

        Called on the inputs thread with everything one poll accepted: under a
        burst of presses, group commit keeps the button path from queueing
        behind one fsync per event.
        """
        made = []
        for type_, source, stamp, data in items:
            test = type_.is_alarm and self.test_mode.active()
            made.append((Event.create(self.clock, type_, source, at=stamp, test=test, data=data), test))
        with self._record_lock:
            seqs = self._put_many([event for event, _ in made])
            for (event, test), seq in zip(made, seqs, strict=True):
                self._recent.appendleft({"id": event.id, "seq": seq, "type": event.type.value,
                                         "source": event.source, "ts": event.ts, "test": test, "delivered": False})
        if self.uplink is not None:
            self.uplink.wake()
        for (event, test), seq in zip(made, seqs, strict=True):
            if event.type.is_alarm and self.indicators is not None:
                self.indicators.alarm_recorded(event.id, silent=self._silent.get(event.source, False))
            if self.inputs is not None and event.type is not EventType.AGENT_STARTED:
                self.inputs.note_event(event.source, event.ts, test=test)
            what = f"{event.type.value}{' (test)' if test else ''} from {event.source}"
            if seq is not None:
                log.info("recorded %s as seq %d (id %s)", what, seq, event.id)
            else:
                log.error("held %s in memory, not yet on disk (id %s)", what, event.id)
        if self.heartbeat is not None:
            self.heartbeat.changed()

    def _put_many(self, events: list[Event]) -> list[int | None]:
        assert self.outbox is not None
        try:
            return list(self.outbox.put_many(events))
        except OutboxError:
            pass  # one by one: whatever fits is still recorded, the rest is held in memory
        seqs: list[int | None] = []
        for event in events:
            try:
                seqs.append(self.outbox.put(event))
            except OutboxError as exc:
                self._unsaved.append(event)
                log.critical("%s; kept %d events in memory only, retrying every few seconds", exc, len(self._unsaved))
                seqs.append(None)
        return seqs

    def _retry_unsaved(self) -> None:
        while self._unsaved and self.outbox is not None:
            event = self._unsaved[0]
            with self._record_lock:
                try:
                    seq = self.outbox.put(event)
                except OutboxError:
                    return
                self._unsaved.popleft()
                for item in self._recent:
                    if item["id"] == event.id:
                        item["seq"] = seq
                        break
            log.warning("event %s kept in memory is now recorded as seq %d", event.id, seq)
            if self.uplink is not None:
                self.uplink.wake()

    def _record_started(self) -> None:
        assert self.outbox is not None
        rec = self.outbox.recovery
        data: dict[str, Any] = {"reason": self._start_reason, "pending": rec.pending}
        if rec.moved_aside is not None:
            data["outbox_recovered"] = {"moved_aside": str(rec.moved_aside), "salvaged": rec.salvaged}
        self.record(EventType.AGENT_STARTED, "agent", self.clock.stamp(), data)
        self._save_state()

    def _save_state(self) -> None:
        """Keep the boot id and seq high-water mark outside the outbox (see statefile.py)."""
        if self.outbox is not None:
            self._state.save(State(self.clock.boot_id, self.outbox.stats().last_seq))

    # ---- what the other parts call back ------------------------------------------

    def _status_doc(self) -> dict[str, Any]:
        assert self.health is not None
        return self.health.status()

    def _offline_doc(self, reason: str) -> dict[str, Any]:
        if self.health is None:
            raise RuntimeError("health is built before the uplink starts")
        return self.health.offline(reason)

    def _on_link(self, state: LinkState) -> None:
        if self.indicators is not None:
            self.indicators.link(state.connected)
        self.notifier.status(self._status_line())
        if self.heartbeat is not None:
            self.heartbeat.changed()

    def _on_delivered(self, row: OutboxRow) -> None:
        if row.alarm and self.indicators is not None:
            self.indicators.alarm_delivered(row.id)
        for item in self._recent:
            if item["seq"] == row.seq:
                item["delivered"] = True
                break
        if row.alarm:
            # DEBUG: at INFO, this line per event was a quarter of the sender's time in a drain
            log.debug("%s event seq %d delivered to the broker", row.type, row.seq)

    def _cmd_ack(self, event_id: str) -> bool:
        # paho's thread: a snapshot of the recent events, nothing that blocks
        shown = self.indicators is not None and self.indicators.acknowledged(event_id)
        known = shown or any(e["id"] == event_id for e in list(self._recent))
        if known:
            log.info("the centre acknowledged event %s", event_id)
        return known

    def _cmd_test_mode(self, minutes: int) -> str | None:
        until = self.test_mode.set(float(minutes))
        log.info("test mode %s (command from the centre)", f"on until {until}" if until else "off")
        if self.heartbeat is not None:
            self.heartbeat.changed()
        return until

    def _cert_warning(self) -> str | None:
        """Client certificate expiry, re-read at most hourly (a renewed file is picked up)."""
        tls = self.cfg.mqtt.tls
        if tls is None or tls.cert_file is None:
            return None
        now = self.clock.mono()
        if self._cert_checked is None or now - self._cert_checked >= 3600:
            from agent.certinfo import expiry_warning  # noqa: PLC0415 - only devices with a client certificate

            try:
                warning = expiry_warning(tls.cert_file, dt.datetime.fromtimestamp(self.clock.wall(), dt.UTC))
            except ConfigError as exc:
                warning = str(exc)
            if warning and warning != self._cert_note:
                log.warning("%s", warning)
            self._cert_note = warning
            self._cert_checked = now  # only now: a status asked meanwhile (control thread) reads the file too
        return self._cert_note

    def _warnings(self) -> list[str]:
        out = list(self._hardware_warnings)
        cert = self._cert_warning()
        if cert:
            out.append(cert)
        if self._unsaved:
            out.append(f"{len(self._unsaved)} events held in memory: outbox cannot write")
        out.extend(self.cfg.warnings)  # weakened security the config asks for (agent/config/model.py)
        return out

    def _watch_test_mode(self) -> Any:
        was = [False]

        def tick() -> None:
            now = self.test_mode.active()
            if now != was[0]:
                was[0] = now
                if self.heartbeat is not None:
                    self.heartbeat.changed()

        return tick

    # ---- watchdog -----------------------------------------------------------------------

    def stalled(self) -> list[str]:
        """Names of threads that have made no progress for ``stall_after_s``."""
        now = self.clock.mono()
        parts = {"uplink-sender": self.uplink, "heartbeat": self.heartbeat, "inputs": self.inputs,
                 "indicators": self.indicators, "cameras": self.cameras}
        return [name for name, p in parts.items() if p is not None and now - p.progress > self.stall_after_s]

    def _feed_watchdog(self) -> None:
        stalled = self.stalled()
        if stalled:
            log.error("threads not making progress: %s; not feeding the watchdog", ", ".join(stalled))
            self.notifier.status(f"stalled: {', '.join(stalled)}")
            return
        self.notifier.watchdog()

    # ---- the control socket -----------------------------------------------------------

    def _control_handlers(self) -> dict[str, Any]:
        return {
            "status": self._ctl_status,
            "simulate": self._ctl_simulate,
            "test_mode": self._ctl_test_mode,
        }

    def _ctl_status(self, _req: dict[str, Any]) -> dict[str, Any]:
        assert self.uplink is not None
        link = self.uplink.state()
        return {
            "status": self._status_doc(),
            "link": {"connected": link.connected, "broker": link.broker, "last_error": link.last_error,
                     "inflight": link.inflight, "published": link.published, "delivered": link.delivered,
                     "refused": link.refused},
            "recent_events": list(self._recent),
            "config": str(self.cfg.source),
        }

    def _ctl_simulate(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.inputs is not None
        name, action = req.get("input"), req.get("action")
        if not isinstance(name, str) or action not in ("press", "release"):
            raise CommandError("simulate needs an input name and 'press' or 'release'")
        self.inputs.simulate(name, active=action == "press")
        return {"input": name, "action": action}

    def _ctl_test_mode(self, req: dict[str, Any]) -> dict[str, Any]:
        minutes = req.get("minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 <= minutes <= 240:
            raise CommandError("test mode takes minutes 0-240 (0 ends it)")
        until = self.test_mode.set(float(minutes))
        log.info("test mode %s", f"on until {until}" if until else "off")
        if self.heartbeat is not None:
            self.heartbeat.changed()
        return {"test_mode_until": until}
