"""When each device's next heartbeat is due: a heap with lazy deletion.

The monitor must notice a silent device without looking at every device:
at 20,000 devices a scan per message (or per batch) made the cost of taking
in the fleet grow with the square of its size.  Each status pushes the
device's new deadline; older entries of the same device stay in the heap and
are skipped when they come out (lazy deletion), so a status costs one push,
O(log n), and a tick costs one pop per deadline that has passed.

Stale entries are bounded: when they outnumber the live ones by
:data:`_SLACK`, the heap is rebuilt from the live deadlines.  That rebuild
is O(n) but happens at most once per n pushes, so it is O(1) per push
amortised, and it is counted in :attr:`Deadlines.ops` like every other step.
"""

from __future__ import annotations

import heapq

_SLACK = 2
_MIN_REBUILD = 1024


class Deadlines:
    """Keys (``site/device``) with a deadline each; take out those that have passed.

    :attr:`ops` counts heap steps (pushes, pops, rebuilt entries) so tests can
    assert that work per message does not grow with the fleet.
    """

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self.ops = 0

    def __repr__(self) -> str:
        return f"<Deadlines {len(self._due)} live, {len(self._heap)} in the heap>"

    def __len__(self) -> int:
        return len(self._due)

    def set(self, key: str, deadline: float) -> None:
        """``key`` is due at ``deadline`` (seconds); replaces its previous deadline."""
        if self._due.get(key) == deadline:
            return
        self._due[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        self.ops += 1
        if len(self._heap) > _MIN_REBUILD and len(self._heap) > (_SLACK + 1) * len(self._due):
            self._rebuild()

    def cancel(self, key: str) -> None:
        """``key`` has no deadline any more (offline, or already flagged)."""
        self._due.pop(key, None)

    def due(self, key: str) -> float | None:
        return self._due.get(key)

    def pop_passed(self, now: float) -> list[str]:
        """Keys whose deadline is before ``now``; they are removed."""
        passed: list[str] = []
        heap = self._heap
        while heap and heap[0][0] < now:
            deadline, key = heapq.heappop(heap)
            self.ops += 1
            if self._due.get(key) == deadline:
                del self._due[key]
                passed.append(key)
        return passed

    def _rebuild(self) -> None:
        self._heap = [(d, k) for k, d in self._due.items()]
        heapq.heapify(self._heap)
        self.ops += len(self._heap)
