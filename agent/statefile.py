"""The agent's small state file beside the outbox: the last boot id and the seq high-water mark.

Kept outside SQLite on purpose.  When the outbox itself is unreadable and has
to be moved aside, this file is what keeps ``seq`` from going backwards: the
new outbox starts :data:`SEQ_MARGIN` above the mark, because events recorded
after the last save (at most one heartbeat tick) may have used a few seqs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEQ_MARGIN = 1000


@dataclass(frozen=True)
class State:
    boot_id: str | None
    last_seq: int


class StateFile:
    """Reads and atomically rewrites ``agent-state.json``; a missing or damaged file reads as empty."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: State | None = None
        self._warned = False

    def load(self) -> State:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            boot = doc.get("boot_id")
            seq = doc.get("last_seq", 0)
            return State(boot if isinstance(boot, str) else None, seq if isinstance(seq, int) else 0)
        except (OSError, ValueError, AttributeError):
            return State(None, 0)

    def save(self, state: State) -> None:
        """Write ``state`` if it changed (write a temporary file, then rename over the old one)."""
        if state == self._saved:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps({"boot_id": state.boot_id, "last_seq": state.last_seq}), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write %s (%s); start reasons may read 'boot' after restarts, and seq could "
                            "restart lower if the outbox is ever damaged", self.path, exc)
                self._warned = True
            return
        self._saved = state

    def seq_floor(self, state: State) -> int:
        """Where seq resumes if the outbox has to be rebuilt (0: no mark known)."""
        return state.last_seq + SEQ_MARGIN if state.last_seq else 0
