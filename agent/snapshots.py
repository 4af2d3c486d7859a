"""A still image with every real alarm, taken off the button's path and stored durably for the sender.

:meth:`Snapshots.request` is called right after the alarm event is committed
(any thread; it only queues).  Each camera has its own worker thread that
takes the still, checks it, and commits it to the :class:`PhotoStore`; then
``on_stored`` wakes the sender, which publishes photos only when no event is
waiting.  When a still cannot be had, ``on_failed(event_id, camera, reason,
detail)`` is called once so the daemon records a ``snapshot_failed`` event:
a missing photo always says why.

* ``picamera2``: opened, configured for a ``width`` x ``height`` still,
  started, a few frames let through for exposure, ``capture_file`` into
  memory as JPEG at ``quality`` (lowered step by step until it fits
  ``max_kb``), then stopped and closed.  The health probe does not keep the
  camera open either, so neither holds it between uses; a ``lock`` shared with
  the probe keeps them from opening it at the same moment (the health checks'
  :class:`~agent.cameras.CameraHold`, which also records since when the still
  has held it, so the probe can tell a stuck still from back-to-back ones).
* ``http_snapshot``, and ``rtsp`` with a ``snapshot_url``: one GET through
  requests with the camera's basic or digest login, read up to ``max_kb``.

The two ways to take a still are in :mod:`agent.stills`; this module queues,
bounds and stores them.

A capture runs on a short-lived thread that the camera's worker waits on for
at most its time budget: a driver or DNS that hangs yields ``hung`` and the
camera is not asked again until that capture returns, so one stuck camera
never delays another camera or the next alarm.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent.closing import Closing
from agent.config.model import CameraConfig, CameraKind
from agent.config.snapshots import SnapshotsConfig
from agent.photostore import Photo, PhotoStore
from agent.stills import HttpStill, PiStill, SnapshotError

log = logging.getLogger(__name__)

OnFailed = Callable[[str, str, str, str], None]  # (event_id, camera, reason, detail)
QUEUE_PER_CAMERA = 8  # stills waiting per camera; beyond it an alarm storm gets "busy", not a backlog
_REOPEN_MIN_WAIT_S = 0.05  # a worker idle while the photo store is down never spins on its reopen


@dataclass(frozen=True)
class _Job:
    event_id: str
    part: int
    parts: int


class CameraLock(Protocol):
    """What a still needs of the lock it shares with its camera's probe: ``threading.Lock`` or ``CameraHold``."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class _Worker:
    """One camera's queue, thread and hung-capture marker."""

    def __init__(self, cfg: CameraConfig, taker: HttpStill | PiStill, lock: CameraLock) -> None:
        self.cfg = cfg
        self.taker = taker
        self.lock = lock
        self.jobs: queue.Queue[_Job | None] = queue.Queue(QUEUE_PER_CAMERA)
        self.hung: threading.Thread | None = None
        self.thread: threading.Thread | None = None


class Snapshots(Closing):
    """Takes, checks and stores a still per camera for each real alarm; never blocks the caller.

    Args:
        cameras: the ``cameras`` section (only those some input photographs get a worker).
        cfg: the ``snapshots`` settings and triggers.
        store: where photos wait for the sender.
        on_stored: called on the camera's worker after a photo is committed (wake the sender).
        on_failed: called once per missing photo with (event_id, camera, reason, detail); on the
            camera's worker, or on the caller of :meth:`request` for ``busy`` and ``stopped``.
        locks: per camera name, a lock shared with that camera's health probe.
        wall: the wall clock (s) stamped on each photo.
        gate: called on the camera's worker with the alarm's id before its still is
            taken; returns once the alarm is out (or a bound passed), so a capture
            never competes with the alarm it belongs to for the interpreter.

    """

    def __init__(
        self,
        cameras: tuple[CameraConfig, ...],
        cfg: SnapshotsConfig,
        store: PhotoStore,
        *,
        on_stored: Callable[[], None],
        on_failed: OnFailed,
        locks: Mapping[str, CameraLock] | None = None,
        wall: Callable[[], float] = time.time,
        gate: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._gate = gate
        self._store = store
        self._on_stored = on_stored
        self._on_failed = on_failed
        self._wall = wall
        self._stop = threading.Event()
        used = {cam for _, cams in cfg.triggers for cam in cams}
        max_bytes = cfg.max_kb * 1024
        self._workers: dict[str, _Worker] = {}
        for cam in cameras:
            if cam.name not in used:
                continue
            url = cfg.still_url(cam)
            taker: HttpStill | PiStill
            if cam.kind is CameraKind.PICAMERA2:
                taker = PiStill(cam, cfg, max_bytes)
            elif url is not None:
                taker = HttpStill(cam, url, max_bytes)
            else:  # the config refuses this; kept as a log line should a caller build its own config
                log.warning("camera %s has no still URL; no photos from it", cam.name)
                continue
            lock: CameraLock = (locks or {}).get(cam.name) or threading.Lock()
            self._workers[cam.name] = _Worker(cam, taker, lock)

    def start(self) -> None:
        """Start one daemon thread per photographing camera (idempotent)."""
        for w in self._workers.values():
            if w.thread is None and not self._stop.is_set():
                w.thread = threading.Thread(target=self._run, args=(w,), name=f"snapshot-{w.cfg.name}", daemon=True)
                w.thread.start()

    def request(self, event_id: str, input_name: str) -> int:
        """Queue a still from each camera ``input_name`` photographs; return how many were queued.

        Call after the alarm is committed, from any thread: this only puts on queues.
        """
        cams = [c for c in self.cfg.cameras_for(input_name) if c in self._workers]
        queued = 0
        for part, name in enumerate(cams, start=1):
            if self._stop.is_set():
                self._failed(event_id, name, SnapshotError("stopped", "the agent is stopping"))
                continue
            try:
                self._workers[name].jobs.put_nowait(_Job(event_id, part, len(cams)))
                queued += 1
            except queue.Full:
                self._failed(
                    event_id,
                    name,
                    SnapshotError(
                        "busy", f"{QUEUE_PER_CAMERA} stills already waiting for {name}; alarm storm or a slow camera"
                    ),
                )
        return queued

    def _run(self, w: _Worker) -> None:
        while True:
            job = self._next_job(w)
            if job is None or self._stop.is_set():
                if job is not None:
                    self._failed(job.event_id, w.cfg.name, SnapshotError("stopped", "the agent stopped first"))
                return
            try:
                if self._gate is not None:
                    self._gate(job.event_id)
                self._take(w, job)
            except Exception:  # a surprise in the bookkeeping must not end this camera's photos
                log.exception("snapshot %s for %s: unexpected failure", w.cfg.name, job.event_id)

    def _next_job(self, w: _Worker) -> _Job | None:
        """The next job; while the store cannot be used, wake when its backoff ends to open it again."""
        while True:
            wait = self._store.reopen_in()
            try:
                return w.jobs.get(timeout=None if wait is None else max(wait, _REOPEN_MIN_WAIT_S))
            except queue.Empty:
                self._call(self._store.reopen)

    def _take(self, w: _Worker, job: _Job) -> None:
        name = w.cfg.name
        try:
            jpeg = self._bounded(w)
            photo = Photo(job.event_id, name, jpeg, self._wall(), job.part, job.parts)
            try:
                dropped = self._store.put(photo)
            except Exception as exc:
                raise SnapshotError("store_error", f"photo store: {type(exc).__name__}: {exc}") from None
        except SnapshotError as exc:
            self._failed(job.event_id, name, exc)
            return
        for old_event, old_camera in dropped:
            self._failed(
                old_event,
                old_camera,
                SnapshotError(
                    "dropped", f"dropped unsent to make room in the photo store (snapshots.max_mb {self.cfg.max_mb:g})"
                ),
            )
        log.info("snapshot %s for event %s: %d bytes stored", name, job.event_id, len(jpeg))
        self._call(self._on_stored)

    def _bounded(self, w: _Worker) -> bytes:
        """Run the capture on its own thread and wait at most the camera's budget (s) for it."""
        if w.hung is not None and w.hung.is_alive():
            raise SnapshotError("hung", f"{w.cfg.name}: the previous capture is still hung; camera or network stuck")
        limit = w.taker.limit_s
        box: list[bytes | SnapshotError] = []

        def work() -> None:
            if not w.lock.acquire(timeout=limit):
                box.append(SnapshotError("busy", f"{w.cfg.name}: its health probe held the camera for {limit:g} s"))
                return
            try:
                box.append(w.taker.take())
            except SnapshotError as exc:
                box.append(exc)
            except Exception as exc:  # a library surprise becomes a failed still, logged with its traceback
                log.exception("snapshot %s: capture raised", w.cfg.name)
                box.append(SnapshotError("camera_error", f"{type(exc).__name__}: {exc}"))
            finally:
                w.lock.release()

        t = threading.Thread(target=work, name=f"still-{w.cfg.name}", daemon=True)
        t.start()
        t.join(2 * limit)  # up to the lock wait plus the capture itself
        if not box:
            w.hung = t
            raise SnapshotError("hung", f"no still from {w.cfg.name} within {2 * limit:g} s; camera or network stuck")
        got = box[0]
        if isinstance(got, SnapshotError):
            raise got
        return got

    def _failed(self, event_id: str, camera: str, exc: SnapshotError) -> None:
        log.warning("snapshot %s for event %s failed (%s): %s", camera, event_id, exc.reason, exc)
        self._call(self._on_failed, event_id, camera, exc.reason, str(exc))

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # the daemon's handlers report their own trouble; a camera worker must survive them
            log.exception("snapshot callback %r failed", fn)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the workers; stills still queued are reported ``stopped``; a hung capture is left behind."""
        if self._stop.is_set():
            return
        self._stop.set()
        for w in self._workers.values():
            with contextlib.suppress(queue.Full):
                w.jobs.put_nowait(None)
        deadline = time.monotonic() + timeout
        for w in self._workers.values():
            if w.thread is not None and w.thread is not threading.current_thread():
                w.thread.join(max(0.0, deadline - time.monotonic()))
            while True:  # whatever the worker did not reach
                try:
                    job = w.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self._failed(job.event_id, w.cfg.name, SnapshotError("stopped", "the agent stopped first"))

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def _repr_state(self) -> str:
        waiting = ", ".join(f"{n}={w.jobs.qsize()}" for n, w in self._workers.items())
        return f"cameras: {waiting or 'none'}"
