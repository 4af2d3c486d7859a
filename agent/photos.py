"""A still with every alarm: the store, the camera workers and the sender's drain, built and closed together.

The daemon owns one :class:`Photos` when any input names a camera to photograph
(``inputs[].snapshot`` or ``cameras[].snapshot_on``).  It is told of an alarm
only after the alarm is committed (the recorder's ``alarm_recorded`` hook), so
a photo can never delay or lose the alarm; the uplink takes photos from
:attr:`drain` only when no event is waiting, so a new alarm overtakes them.

A capture starts only once its alarm is acknowledged by the broker, or
:data:`GATE_S` after the alarm was recorded (the link may be down): a camera
worker preparing an HTTP request in the same moment as the sender publishes
the alarm made the alarm measurably slower (``make bench``, photos figure).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from agent.closing import Closing
from agent.config.model import Config
from agent.photosend import PhotoDrain
from agent.photostore import PhotoStore
from agent.snapshots import CameraLock, Snapshots

log = logging.getLogger(__name__)

OnFailed = Callable[[str, str, str, str], None]  # (event id, camera, reason, detail)

GATE_S = 0.25  # longest a still waits for its alarm's PUBACK before it is taken anyway
_GATE_MEMORY = 256  # acknowledged alarm ids remembered for the gate


class Photos(Closing):
    """Photos for one agent: ``request`` on an alarm, ``drain`` for the sender, ``status`` for the heartbeat.

    Args:
        cfg: the whole config (``snapshots``, ``cameras``, ``outbox.path``, the topic root).
        wake: wakes the sender once a photo is stored.
        on_failed: records a ``snapshot_failed`` event (any thread).
        locks: per camera, the lock its health probe holds, so a still and a probe never
            open the Pi camera at once.
        wall: the wall clock (s).

    """

    def __init__(
        self,
        cfg: Config,
        *,
        wake: Callable[[], None],
        on_failed: OnFailed,
        locks: Mapping[str, CameraLock] | None,
        wall: Callable[[], float],
    ) -> None:
        self.store = PhotoStore(cfg.outbox.path.with_name("photos.db"), max_mb=cfg.snapshots.max_mb, wall=wall)
        self._out: dict[str, None] = {}  # alarm ids acknowledged by the broker, oldest first
        self._out_cond = threading.Condition()
        self.snapshots = Snapshots(
            cfg.cameras,
            cfg.snapshots,
            self.store,
            on_stored=wake,
            on_failed=on_failed,
            locks=locks,
            wall=wall,
            gate=self._wait_for_alarm,
        )
        self.drain = PhotoDrain(self.store, cfg.topic_root, on_failed=on_failed)
        self._closed = False

    def start(self) -> None:
        self.snapshots.start()
        pending = self.store.stats().pending
        if pending:
            log.info("%d photos from before the restart wait to be sent", pending)

    def request(self, event_id: str, source: str) -> None:
        """The alarm ``event_id`` from input ``source`` is committed: queue its stills (once closed: ``stopped``)."""
        self.snapshots.request(event_id, source)

    def alarm_delivered(self, event_id: str) -> None:
        """The broker acknowledged alarm ``event_id`` (the sender's thread): its stills may be taken."""
        with self._out_cond:
            self._out[event_id] = None
            while len(self._out) > _GATE_MEMORY:
                del self._out[next(iter(self._out))]
            self._out_cond.notify_all()

    def _wait_for_alarm(self, event_id: str) -> None:
        with self._out_cond:
            self._out_cond.wait_for(lambda: event_id in self._out or self._closed, timeout=GATE_S)

    def status(self) -> dict[str, Any]:
        """The status document's ``photos`` object; ``error`` while ``photos.db`` cannot be used (stills fail)."""
        s = self.store.stats()
        doc: dict[str, Any] = {"pending": s.pending, "bytes": s.bytes, "dropped": s.dropped}
        if self.store.error is not None:
            doc["error"] = self.store.error[:160]
        return doc

    def close(self) -> None:
        """Stop the camera workers (queued stills are reported ``stopped``), then close the store."""
        if self._closed:
            return
        self._closed = True
        with self._out_cond:
            self._out_cond.notify_all()
        self.snapshots.close()
        self.store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_state(self) -> str:
        s = self.store.stats()
        return f"pending={s.pending} bytes={s.bytes} dropped={s.dropped}"
