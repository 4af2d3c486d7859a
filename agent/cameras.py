"""Camera health: each camera probed on its own schedule, with hysteresis, off the button's path.

Each camera has its own daemon thread probing it every ``probe_interval_s``
seconds (monotonic clock).  The probe (``camprobes.py``) runs on a
short-lived thread that the worker waits on for at most the camera's time
budget, so a probe stuck in a driver or in DNS is reported as hung (and not
started again until it returns) while the worker, ``states()`` and
``progress`` carry on.

Hysteresis: ``fail_after`` consecutive failures emit one ``camera_fault``; the
first success after that, one ``camera_restored``.  ``ok`` is None until the
first success or fault and then follows those events, so status and events
never disagree; ``detail`` is always the latest probe's finding.

A still holds the camera's lock (:class:`CameraHold`) while it captures; a
probe that cannot get it is skipped as busy, until the still holding it now
has held it for twice the still's time budget: then each such probe counts as
failed (the camera or network is stuck).  The holder itself records when it
took the lock: back-to-back stills leave the camera free for only a moment
between them, which a probe sampling it would miss and take for one stuck still.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.camprobes import PiCameraProbe, ProbeResult, address_of, elapsed_ms, one_line, probe_http, probe_rtsp
from agent.closing import Closing
from agent.config.model import CameraConfig, CameraKind
from agent.errors import CameraError
from agent.events import Clock, EventType, Stamp, iso_ms
from agent.stills import still_budget_s

log = logging.getLogger(__name__)

Emit = Callable[[EventType, str, Stamp, Mapping[str, Any]], None]
_HANG_GRACE_S = 1.0


class CameraHold:
    """The lock a camera's stills and its probe share, and since when (monotonic s) its holder has had it.

    Works like ``threading.Lock`` (``acquire``, ``release``, ``with``); each
    acquire stamps :attr:`held_since`, each release clears it, so a probe
    judges the still holding the camera now, never an earlier one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held_since: float | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self.held_since = time.monotonic()
        return True

    def release(self) -> None:
        self.held_since = None
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def held_s(self) -> float:
        """Seconds the current holder has held it; 0 when free (or just taken, not yet stamped)."""
        since = self.held_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = f"held for {self.held_s():.1f} s" if self.locked() else "free"
        return f"<CameraHold {state}>"


def _hang_detail(cfg: CameraConfig, limit_s: float) -> str:
    if cfg.kind is CameraKind.PICAMERA2:
        return f"no still from camera {cfg.camera_num} within {limit_s:g} s: camera or driver hung; reboot the Pi"
    return f"probe of {address_of(cfg.url or '', 0)[2]} hung for {limit_s:g} s: network or DNS stuck; check the network"


class _Camera:
    """One camera's probe, time budget (s) and hysteresis state (status fields under Cameras' lock)."""

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        probes = {
            CameraKind.HTTP_SNAPSHOT: functools.partial(probe_http, cfg),
            CameraKind.RTSP: functools.partial(probe_rtsp, cfg),
        }
        self.probe = probes.get(cfg.kind) or PiCameraProbe(cfg).probe
        # HTTP digest auth takes two round trips, each bounded by requests' own timeouts.
        self.limit_s = cfg.timeout_s if cfg.kind is CameraKind.PICAMERA2 else 2 * cfg.timeout_s + _HANG_GRACE_S
        self.ok: bool | None = None
        self.checked: str | None = None
        self.detail = "not checked yet"
        self.failures = 0
        self.first_failure = 0.0
        self.hung: threading.Thread | None = None  # a probe that overran its budget and is still running
        self.hung_since = 0.0
        # A still ends within its budget (stills.py); one holding the camera twice that long is stuck.
        self.stuck_after_s = 2 * still_budget_s(cfg)
        self.probe_lock = CameraHold()
        self.progress = 0.0  # monotonic time of its worker's last sign of life


class Cameras(Closing):
    """Probes the configured cameras, each on its own thread and schedule, and reports their health.

    Args:
        configs: the ``cameras`` section.
        clock: stamps events; its ``mono`` drives the schedules.
        emit: called on a camera's thread with (type, camera name, stamp, data)
            once per ``camera_fault`` and ``camera_restored``; it must do the
            durable put and return.
        on_change: called whenever a camera's ``ok`` changes, so the status is
            republished at once.

    """

    def __init__(
        self,
        configs: tuple[CameraConfig, ...],
        *,
        clock: Clock,
        emit: Emit,
        on_change: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._emit = emit
        self._on_change = on_change
        self._cams = {cfg.name: _Camera(cfg) for cfg in configs}
        self._lock = threading.Lock()  # guards the status fields; never held during a probe or a callback
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for cam in self._cams.values():
            cam.progress = float(clock.mono())

    @property
    def progress(self) -> float:
        """Monotonic time (s) of the stalest worker's last activity; "now" when no worker runs.

        The stalest, so one worker stuck in a callback is not hidden by the others' progress.
        """
        if not self._threads or self._stop.is_set():
            return float(self._clock.mono())
        return min(cam.progress for cam in self._cams.values())

    def start(self) -> None:
        """Start one daemon thread per camera; each probes at once, then every ``probe_interval_s``."""
        if self._threads or self._stop.is_set():
            return
        for cam in self._cams.values():
            t = threading.Thread(target=self._run, args=(cam,), name=f"camera-{cam.cfg.name}", daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, cam: _Camera) -> None:
        due = self._clock.mono()
        while not self._stop.is_set():
            now = cam.progress = self._clock.mono()
            if now < due:
                self._stop.wait(min(1.0, due - now))
                continue
            due = now + cam.cfg.probe_interval_s
            try:
                self._probe(cam)
            except Exception:
                log.exception("camera %s: probe bookkeeping failed; trying again next round", cam.cfg.name)

    def probe_now(self, name: str) -> ProbeResult:
        """Probe one camera on the caller's thread, waiting at most its time budget, and record the result.

        Raises:
            CameraError: no camera has that name.

        """
        cam = self._cams.get(name)
        if cam is None:
            raise CameraError(f"no camera named '{name}'; configured: {', '.join(self._cams) or 'none'}")
        return self._probe(cam)

    def _probe(self, cam: _Camera) -> ProbeResult:
        t0 = time.monotonic()
        if not self._lock_camera(cam):
            return self._busy(cam, t0)
        try:
            result = self._bounded(cam)
        finally:
            cam.probe_lock.release()
        if not self._stop.is_set():
            self._record(cam, result)
        return result

    def _lock_camera(self, cam: _Camera) -> bool:
        """Take the lock shared with the camera's stills, waiting at most its budget and showing progress."""
        end = time.monotonic() + cam.limit_s
        while not cam.probe_lock.acquire(timeout=min(0.25, max(0.0, end - time.monotonic()))):
            cam.progress = self._clock.mono()
            if time.monotonic() >= end or self._stop.is_set():
                return False
        return True

    def _busy(self, cam: _Camera, t0: float) -> ProbeResult:
        """A still holds the camera: no failure while a still may take that long, a failed probe once it is stuck."""
        held_s = cam.probe_lock.held_s()
        if held_s > cam.stuck_after_s and not self._stop.is_set():
            detail = f"a still has held the camera for {held_s:.0f} s: camera or network stuck"
            result = ProbeResult(ok=False, detail=one_line(detail), elapsed_ms=elapsed_ms(t0))
            self._record(cam, result)
            return result
        result = ProbeResult(
            ok=False, detail=one_line(f"not probed: busy with a still for {held_s:.1f} s"), elapsed_ms=elapsed_ms(t0)
        )
        log.info("camera %s: %s", cam.cfg.name, result.detail)
        with self._lock:
            cam.detail = result.detail
        return result

    def _bounded(self, cam: _Camera) -> ProbeResult:
        t0 = time.monotonic()
        hang = _hang_detail(cam.cfg, cam.limit_s)
        if cam.hung is not None and cam.hung.is_alive():
            return ProbeResult(
                ok=False, detail=one_line(f"{hang} (still, after {t0 - cam.hung_since:.0f} s)"), elapsed_ms=0
            )
        box: list[ProbeResult] = []

        def work() -> None:
            try:
                box.append(cam.probe())
            except Exception as exc:  # a library surprise becomes a failed probe, logged with its traceback
                log.exception("camera %s: probe raised", cam.cfg.name)
                box.append(
                    ProbeResult(
                        ok=False, detail=one_line(f"probe error {type(exc).__name__}: {exc}"), elapsed_ms=elapsed_ms(t0)
                    )
                )

        thread = threading.Thread(target=work, name=f"probe-{cam.cfg.name}", daemon=True)
        thread.start()
        while thread.is_alive() and not self._stop.is_set() and time.monotonic() < t0 + cam.limit_s:
            thread.join(min(0.25, max(0.0, t0 + cam.limit_s - time.monotonic())))
            cam.progress = self._clock.mono()
        if box:
            return box[0]
        cam.hung, cam.hung_since = thread, t0
        return ProbeResult(ok=False, detail=one_line(hang), elapsed_ms=elapsed_ms(t0))

    def _record(self, cam: _Camera, result: ProbeResult) -> None:
        stamp = self._clock.stamp()
        name, kind = cam.cfg.name, cam.cfg.kind.value
        with self._lock:
            was, failures = cam.ok, cam.failures
            cam.checked, cam.detail = iso_ms(stamp.wall), result.detail
            cam.failures = 0 if result.ok else failures + 1
            if cam.failures == 1:
                cam.first_failure = stamp.mono
            if result.ok or (was is not False and cam.failures >= cam.cfg.fail_after):
                cam.ok = result.ok
            now, down_s = cam.ok, round(stamp.mono - cam.first_failure, 1)
        log.debug("camera %s probe: ok=%s %s", name, result.ok, result.detail)
        if now is was:
            return
        if now is False:
            log.warning("camera %s (%s) FAULT after %d failed probes: %s", name, kind, failures + 1, result.detail)
            data = {"kind": kind, "detail": result.detail, "failures": failures + 1}
            self._call(self._emit, EventType.CAMERA_FAULT, name, stamp, data)
        elif was is False:
            log.info("camera %s (%s) restored after %.0f s down: %s", name, kind, down_s, result.detail)
            data = {"kind": kind, "detail": result.detail, "failures": failures, "down_s": down_s}
            self._call(self._emit, EventType.CAMERA_RESTORED, name, stamp, data)
        self._call(self._on_change)

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # the daemon's callbacks report their own trouble; a camera thread must survive them
            log.exception("camera callback %r failed", fn)

    def locks(self) -> dict[str, CameraHold]:
        """Per camera, the lock its probe holds: a still taken under it never opens the Pi camera twice."""
        return {name: cam.probe_lock for name, cam in self._cams.items()}

    def states(self) -> dict[str, dict[str, Any]]:
        """Each camera for the status document: ``ok`` (None before the first verdict), ``checked``, ``detail``."""
        with self._lock:
            return {n: {"ok": c.ok, "checked": c.checked, "detail": c.detail} for n, c in self._cams.items()}

    def close(self) -> None:
        """Stop the workers, waiting a second at most: a hung probe's daemon thread is left behind."""
        if self._stop.is_set():
            return
        self._stop.set()
        deadline = time.monotonic() + 1.0
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def _repr_state(self) -> str:
        words = {True: "ok", False: "fault", None: "unknown"}
        return ", ".join(f"{n}={words[s['ok']]}" for n, s in self.states().items()) or "no cameras"
