"""Transmission times and path availability as the status reports them, kept across restarts.

The figures themselves (histograms, availability slots) are :mod:`agent.linkstats`;
this module feeds them from the agent's callbacks and keeps them in
``link-stats.json`` beside the outbox.  The file is written at most once per
``save_every_s`` (the heartbeat interval) and at stop: a few tens of kB every
30 s is already a lot of SD-card writes, and losing one interval of figures to
a SIGKILL is the documented price.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.closing import Closing
from agent.linkstats import LinkStats
from agent.statefile import write_atomic

log = logging.getLogger(__name__)


class Transmission(Closing):
    """Feeds :class:`LinkStats` from link changes and PUBACKs; saves and restores it.

    Args:
        path: the JSON file (``link-stats.json`` beside the outbox).
        wall: the wall clock (s); the figures are per calendar hour and day.
        mono: the monotonic clock (s) that paces the saves.
        save_every_s: least time between two saves.

    """

    def __init__(
        self,
        path: Path,
        *,
        wall: Callable[[], float],
        mono: Callable[[], float],
        save_every_s: float,
    ) -> None:
        self.path = path
        self._wall = wall
        self._mono = mono
        self._every = save_every_s
        self._saved_at: float | None = None
        self._warned = False
        self._closed = False
        self._broker: str | None = None
        self.stats = LinkStats.from_state(self._read(), wall())

    def _read(self) -> Any:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); transmission figures start afresh", self.path, exc)
            return None

    def link(self, connected: bool, broker: str | None) -> None:
        """The uplink's state changed (any thread)."""
        if connected and broker is not None:
            self._broker = broker
            self.stats.link_up(broker, self._wall())
        else:
            self._broker = None
            self.stats.link_down(self._wall())

    def delivered(self, recorded_wall: float) -> None:
        """An event recorded at ``recorded_wall`` was acknowledged by the broker now connected (sender thread)."""
        broker = self._broker
        if broker is not None:
            now = self._wall()
            self.stats.delivered(broker, now - recorded_wall, now)

    def snapshot(self) -> dict[str, Any]:
        """The status document's ``link.stats``."""
        return self.stats.snapshot(self._wall())

    def save(self, *, force: bool = False) -> None:
        """Write the figures if ``save_every_s`` has passed since the last write (or ``force``)."""
        now = self._mono()
        if not force and self._saved_at is not None and now - self._saved_at < self._every:
            return
        self._saved_at = now
        data = json.dumps(self.stats.to_state(self._wall()), separators=(",", ":")).encode()
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write %s (%s); transmission figures will restart after a restart", self.path, exc)
                self._warned = True

    def close(self) -> None:
        """Save once more; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.save(force=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_id(self) -> str:
        return str(self.path)
