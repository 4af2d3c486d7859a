"""What a valid command must still pass before it is carried out: budget, freshness, uniqueness.

:mod:`agent.commands` decides whether a message *is* a command; this module
decides whether it may be *obeyed* now.  The three rules, and why:

- **Budgets per command name.** Each name (``ack``, ``ping``, ``test_mode``,
  and one shared budget for unknown names) has its own token bucket of
  ``rate_per_min`` (burst of at most 10) and its own allowance of 3 answered
  refusals a minute.  MQTT does not tell a device who published, so the
  budget cannot be per sender; per name, a flood of pings from a runaway tool
  or garbage on ``cmd/anything`` no longer locks out the centre's ``ack`` and
  ``test_mode``, and a command flood still never becomes a reply flood.
- **Retained or stale commands are refused.** A retained command is replayed
  by the broker on every connect (a forgotten ``test_mode`` would mark real
  presses as tests for hours).  When this device's clock is synchronised, a
  ``ts`` more than :data:`MAX_AGE_S` old or :data:`MAX_AHEAD_S` in the future
  is refused too; with an unsynchronised clock ``ts`` cannot be judged and is
  not interpreted.
- **A command id is obeyed once.** Ids seen in the last :data:`REPLAY_WINDOW_S`
  (at most :data:`REPLAY_IDS` of them) are refused, so a byte-identical copy of
  an old ``ack`` or ``test_mode`` does nothing.  The centre sends every command
  with a fresh id (it already must, to match replies).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import OrderedDict

MAX_AGE_S = 300.0
MAX_AHEAD_S = 60.0
REPLAY_IDS = 1000
REPLAY_WINDOW_S = 3600.0
BURST = 10
LIMITED_REPLIES_PER_MIN = 3
OTHER = "(unknown names)"


class Bucket:
    """Token bucket on the monotonic clock: ``per_min`` tokens a minute, at most ``burst`` saved."""

    def __init__(self, per_min: float, burst: int, now: float) -> None:
        self._per_s = per_min / 60.0
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._per_s)
        self._at = max(self._at, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Budgets:
    """One command budget and one refusal-reply allowance per command name (not thread-safe: lock outside)."""

    def __init__(self, names: frozenset[str], rate_per_min: int, now: float) -> None:
        burst = max(1, min(BURST, rate_per_min))
        self._names = names
        self._run = {n: Bucket(rate_per_min, burst, now) for n in (*sorted(names), OTHER)}
        self._answer = {n: Bucket(LIMITED_REPLIES_PER_MIN, LIMITED_REPLIES_PER_MIN, now) for n in self._run}

    def admit(self, name: str, now: float) -> tuple[bool, bool]:
        """``(allowed, answer_refusal)`` for one message on ``cmd/{name}``."""
        key = name if name in self._names else OTHER
        if self._run[key].take(now):
            return True, False
        return False, self._answer[key].take(now)


def staleness(ts: str | None, wall: float, *, retained: bool, synced: bool) -> str | None:
    """Why a command is too old (or retained) to obey, or None when it may be carried out."""
    if retained:
        return (
            "retained commands are never obeyed (the broker would replay it on every connect); "
            "publish commands with retain off"
        )
    if not synced or ts is None:
        return None
    try:
        sent = dt.datetime.fromisoformat(ts)
    except ValueError:
        sent = None
    if sent is None or sent.tzinfo is None:
        return f"field 'ts' must be an ISO 8601 time with a zone, like 2026-11-29T06:01:05.000Z, got {ts[:40]!r}"
    age = wall - sent.timestamp()
    if age > MAX_AGE_S:
        return f"stale command: sent {age:.0f} s ago; commands older than {MAX_AGE_S:.0f} s are refused"
    if -age > MAX_AHEAD_S:
        return (
            f"command dated {-age:.0f} s in the future; more than {MAX_AHEAD_S:.0f} s ahead of this "
            "device's synchronised clock is refused: check the sender's clock"
        )
    return None


class ReplayWindow:
    """Command ids already obeyed: the last :data:`REPLAY_IDS`, each for :data:`REPLAY_WINDOW_S`."""

    def __init__(self, size: int = REPLAY_IDS, window_s: float = REPLAY_WINDOW_S) -> None:
        self._size = size
        self._window_s = window_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check_and_add(self, cmd_id: str, now: float) -> str | None:
        """Remember ``cmd_id``; return why it is refused if it was seen within the window."""
        while self._seen and (len(self._seen) > self._size or now - next(iter(self._seen.values())) > self._window_s):
            self._seen.popitem(last=False)
        first = self._seen.get(cmd_id)
        if first is not None:
            return (
                f"repeated command id: {cmd_id[:40]!r} was already handled {now - first:.0f} s ago; "
                "every command needs a new id"
            )
        self._seen[cmd_id] = now
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return None

    def __len__(self) -> int:
        return len(self._seen)


class LogThrottle:
    """Log each kind of refusal once, then at most every ``every_s`` with a count (lock outside)."""

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (last logged, hidden since)

    def due(self, kind: str, now: float) -> int | None:
        """How many of ``kind`` went unlogged if it is time to log one again, else None."""
        last, hidden = self._logged.get(kind, (-math.inf, 0))
        if now - last >= self._every_s:
            self._logged[kind] = (now, 0)
            return hidden
        self._logged[kind] = (last, hidden + 1)
        return None
