"""Live state, the status document built from it, and the heartbeat timer.

Status is never queued: an old status is worth nothing.  The timer thread
builds a fresh document every ``heartbeat.interval_s`` and whenever something
in it changes state, and hands it to the uplink's single status slot.

Each section is built on its own: one that raises (the outbox's query on a
failing SD card, a source with a bug) is sent in its empty form and named in
``warnings``, so the rest of the status, the office's only view of the device,
still goes out, and still matches the contract.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import __version__
from agent.closing import Closing
from agent.errors import OutboxBusyError
from agent.events import CONTRACT_VERSION, Clock, Stamp, iso_ms
from agent.outbox import Outbox
from agent.outbox_rows import OutboxRow
from agent.testmode import TestMode
from agent.uplink import LinkState
from agent.watched_input import InputState

log = logging.getLogger(__name__)
OUTBOX_WAIT_S = 1.0  # past a slow SD card's commit; one stuck in SQLite's busy timeout holds the outbox 10 s

MAX_DETAIL = 120  # characters of a camera detail or warning in status: its size bound (docs/contract.md)
MAX_WARNINGS = 3
_NO_SECTION = object()  # an optional section that failed: left out of the document


@dataclass
class StatusSources:
    """Where each section of the status document comes from (callables, so tests can fake them)."""

    link: Callable[[], LinkState]
    inputs: Callable[[], dict[str, InputState]]
    cameras: Callable[[], dict[str, dict[str, Any]]] = dict
    outputs: Callable[[], dict[str, dict[str, Any]]] | None = None
    commands: Callable[[], dict[str, Any]] | None = None
    warnings: Callable[[], list[str]] = list
    link_stats: Callable[[], dict[str, Any]] | None = None  # agent/transmission.py: times and availability
    photos: Callable[[], dict[str, Any]] | None = None  # agent/photos.py: stills waiting to be sent
    held: Callable[[], list[OutboxRow]] = list  # Recorder.held: events kept in memory, counted as pending


def _cut(text: str) -> str:
    """A warning at the status's bound; a cut one ends in "…", so a reader knows more was said (doctor judges it)."""
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def read_cpu_temp(root: Path = Path("/sys/class/thermal")) -> float | None:
    try:
        for zone in sorted(root.glob("thermal_zone*")):
            text = (zone / "temp").read_text(encoding="ascii").strip()
            return round(int(text) / 1000.0, 1)
    except (OSError, ValueError):
        return None
    return None


def _no_vitals() -> dict[str, Any]:
    return {"cpu_temp_c": None, "disk_free_mb": None, "load1": None}


def system_vitals(outbox_dir: Path) -> dict[str, Any]:
    try:
        free_mb: int | None = shutil.disk_usage(outbox_dir).free // (1024 * 1024)
    except OSError:
        free_mb = None
    try:
        load1: float | None = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    return {"cpu_temp_c": read_cpu_temp(), "disk_free_mb": free_mb, "load1": load1}


class Health:
    """Builds the contract's status and offline documents from live state."""

    def __init__(
        self,
        *,
        site: str,
        device: str,
        clock: Clock,
        outbox: Outbox,
        sources: StatusSources,
        test_mode: TestMode,
        heartbeat_s: float | None = None,
    ) -> None:
        self.site = site
        self.heartbeat_s = heartbeat_s
        self.device = device
        self.clock = clock
        self.outbox = outbox
        self.sources = sources
        self.test_mode = test_mode
        self._started = clock.mono()
        self._failing: set[str] = set()  # sections that failed last time: logged once, not every heartbeat
        self._failing_lock = threading.Lock()  # status() runs on the heartbeat, sender and control threads

    def status(self) -> dict[str, Any]:
        """The live status document; never raises for a section (see the module docstring)."""
        failed: list[str] = []
        busy: list[str] = []  # the outbox's figures came from memory: a commit held it (not a read failure)

        def part(name: str, build: Callable[[], Any], empty: Callable[[], Any]) -> Any:
            try:
                value = build()
            except Exception as exc:
                self._note(name, exc)
                failed.append(f"{name} ({type(exc).__name__}: {exc})")
                return empty()
            self._note(name, None)
            return value

        now: Stamp = part("clock", self.clock.stamp, self._unsynced_stamp)
        doc: dict[str, Any] = {
            "v": CONTRACT_VERSION,
            "site": self.site,
            "device": self.device,
            "state": "online",
            "ts": iso_ms(now.wall),
            "clock_synced": now.synced,
            "mono_ms": int(now.mono * 1000),  # with agent.boot_id: re-times this boot's unsynced events
            "agent": {
                "version": __version__,
                "boot_id": self.clock.boot_id,
                "uptime_s": int(now.mono - self._started),
            },
            "link": part("link", self._link, lambda: {"connected_since": None, "reconnects": 0}),
            "outbox": part("outbox", lambda: self._outbox(busy), self._outbox_from_memory),
            "inputs": part("inputs", self._inputs, dict),
            "cameras": part("cameras", self._cameras, dict),
            "system": part("system", lambda: system_vitals(self.outbox.path.parent), _no_vitals),
            "test_mode_until": part("test_mode", self.test_mode.until, lambda: None),
        }
        if self.heartbeat_s is not None:  # the monitor's deadline: no interval to guess from the gaps
            doc["heartbeat_s"] = self.heartbeat_s
        optional = [
            ("outputs", doc, "outputs", self.sources.outputs),
            ("commands", doc, "commands", self.sources.commands),
            ("link.stats", doc["link"], "stats", self.sources.link_stats),
            ("photos", doc, "photos", self.sources.photos),
        ]
        for name, into, key, source in optional:
            value = _NO_SECTION if source is None else part(name, source, lambda: _NO_SECTION)
            if value is not _NO_SECTION:
                into[key] = value
        warnings = part("warnings", self.sources.warnings, list)
        warnings = [*busy, *warnings]
        if failed:  # first: it explains the empty sections above it
            warnings = [f"status incomplete, cannot read: {', '.join(failed)}", *warnings]
        if warnings:
            doc["warnings"] = [_cut(w) for w in warnings[:MAX_WARNINGS]]
        return doc

    def _note(self, section: str, exc: Exception | None) -> None:
        """Log a section that starts failing (with its traceback) or works again, once each."""
        with self._failing_lock:
            if exc is not None and section not in self._failing:
                self._failing.add(section)
                log.error("status: cannot read %s; sent empty until it works again", section, exc_info=exc)
            elif exc is None and section in self._failing:
                self._failing.discard(section)
                log.info("status: %s can be read again", section)

    def _unsynced_stamp(self) -> Stamp:
        return Stamp(wall=self.clock.wall(), mono=self.clock.mono(), synced=False)

    def _link(self) -> dict[str, Any]:
        link = self.sources.link()
        return {
            "connected_since": iso_ms(link.connected_since) if link.connected_since else None,
            "reconnects": link.reconnects,
            "broker": link.broker,
            "protocol": link.protocol,
            "retain": link.retain,
            "commands": {"available": link.commands_available, "reason": link.commands_reason},
        }

    def _outbox(self, busy: list[str]) -> dict[str, Any]:
        """The outbox's figures with the events held in memory added: they are as unsent as its rows.

        Held events are read first: one stored meanwhile is then counted in
        the outbox too (once more, for one status), never in neither.  While a
        commit holds the outbox, the counts it keeps in memory go, and ``busy``
        gets the warning that says so.
        """
        held = self.sources.held()
        try:
            ob = self.outbox.stats(wait_s=OUTBOX_WAIT_S)
        except OutboxBusyError as exc:
            busy.append(f"outbox busy: {exc}")
            return self._outbox_from_memory()
        oldest = ob.oldest_age_s
        if held:
            held_age = max(0.0, round(self.clock.wall() - min(r.created for r in held), 3))
            oldest = held_age if oldest is None else max(oldest, held_age)
        return {
            "pending": ob.pending + len(held),
            "oldest_age_s": oldest,
            "dropped": ob.dropped,
            "disk_low": ob.disk_low,
        }

    def _outbox_from_memory(self) -> dict[str, Any]:
        """The counts the outbox keeps in memory: a consumer must never read a made-up ``pending: 0`` as "drained"."""
        try:
            held = len(self.sources.held())
        except Exception:  # the section is already named in warnings; the outbox's count still goes
            held = 0
        return {"pending": self.outbox.pending() + held, "oldest_age_s": None, "dropped": self.outbox.dropped}

    def _inputs(self) -> dict[str, Any]:
        return {
            name: {"kind": s.kind, "state": s.state, "last_event": s.last_event, "last_test": s.last_test}
            for name, s in self.sources.inputs().items()
        }

    def _cameras(self) -> dict[str, Any]:
        return {
            name: {**cam, "detail": str(cam.get("detail", ""))[:MAX_DETAIL]}
            for name, cam in self.sources.cameras().items()
        }

    def offline(self, reason: str) -> dict[str, Any]:
        return {
            "v": CONTRACT_VERSION,
            "site": self.site,
            "device": self.device,
            "state": "offline",
            "reason": reason,
            "ts": iso_ms(self.clock.wall()),
        }


@dataclass
class Heartbeat(Closing):
    """The timer thread: periodic status, status on change, and small periodic tasks.

    ``ticks`` run every ``tick_s`` seconds on this thread (test-mode expiry,
    retrying events held in memory); they must be quick.  ``progress`` is what
    the watchdog looks at.
    """

    interval_s: float
    publish: Callable[[], None]
    mono: Callable[[], float]
    ticks: list[Callable[[], None]] = field(default_factory=list)
    min_gap_s: float = 0.2
    settle_s: float = 0.05
    tick_s: float = 10.0
    progress: float = 0.0

    def __post_init__(self) -> None:
        self._wake = threading.Event()
        self._changed = False
        self._changed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.progress = self.mono()

    def changed(self) -> None:
        """Something in the status changed state: publish soon (coalesced).

        "Soon" is ``settle_s`` later, so the event that caused the change goes
        out first instead of sharing the interpreter with a status being built.
        """
        if not self._changed:
            self._changed_at = self.mono()
            self._changed = True
            self._wake.set()  # once: the thread then sleeps until the change is due

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_beat = self.mono()
        next_tick = self.mono()
        last = -1e9
        while not self._stop.is_set():
            now = self.mono()
            self.progress = now
            if now >= next_tick:
                next_tick = now + self.tick_s
                for tick in self.ticks:
                    try:
                        tick()
                    except Exception:
                        log.exception("periodic task failed; carrying on")
            change_due = max(last + self.min_gap_s, self._changed_at + self.settle_s)
            if now >= next_beat or (self._changed and now >= change_due):
                self._changed = False
                last = now
                next_beat = now + self.interval_s
                try:
                    self.publish()
                except Exception:
                    log.exception("building the status document failed; will try again next heartbeat")
            wait = max(0.0, min(next_tick, next_beat) - now)
            if self._changed:
                wait = min(wait, max(0.0, change_due - now))
            self._wake.wait(wait)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def close(self) -> None:
        """Stop the timer thread; idempotent (the resource-owner spelling of :meth:`stop`)."""
        self.stop()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def _repr_id(self) -> str:
        return f"every {self.interval_s:g} s"

    def _repr_state(self) -> str:
        state = "running" if self._thread is not None else "not started"
        return f"{state}{' change pending' if self._changed else ''}"


__all__ = ["MAX_DETAIL", "MAX_WARNINGS", "OUTBOX_WAIT_S", "Health", "Heartbeat", "StatusSources", "TestMode"]
