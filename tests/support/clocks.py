"""Clocks for tests: a synced real clock, and fake time that moves only when the test moves it.

The agent reads time through one seam (``agent.events.Clock``: wall, monotonic,
sync state, boot id); these are the two ways the tests fill it.
"""

from __future__ import annotations

from agent.events import Clock

WALL_AT_MONO_ZERO = 1.7e9  # fake wall time is this plus the fake monotonic time, unless told otherwise


def synced_clock(boot_id: str = "b00t") -> Clock:
    """Real time, a kernel clock that says it is synchronised, and a fixed boot id."""
    return Clock(synced=lambda: True, boot_id=boot_id)


class FakeTime:
    """Monotonic and wall time that move together, only through :meth:`advance` or by setting ``t``.

    The instance itself is a ``mono`` callable (``Clock(mono=fake_time)``, ``Heartbeat(mono=...)``);
    :meth:`wall` is the matching wall-clock callable.  Debounce, hold and rate-limit
    timing is tested against this, never against the real clock.
    """

    def __init__(self, t: float = 1000.0, *, wall: float | None = None) -> None:
        self.t = t
        self._wall_offset = WALL_AT_MONO_ZERO if wall is None else wall - t

    def __call__(self) -> float:
        return self.t

    def __repr__(self) -> str:
        return f"<FakeTime mono={self.t:g} wall={self.wall():.3f}>"

    def wall(self) -> float:
        return self._wall_offset + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def clock(self, *, synced: bool = True, boot_id: str = "b") -> Clock:
        """An ``agent.events.Clock`` reading this fake time."""
        return Clock(wall=self.wall, mono=self, synced=lambda: synced, boot_id=boot_id)
