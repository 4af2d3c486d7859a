"""What a restart carries over from the last run: its alarms' feedback and its test mode.

The person who pressed must see an alarm go out and be acknowledged even if
the agent restarted in between, and a technician's test mode must not end
(or turn a press into a real alarm) because the watchdog restarted the agent.
The state file (agent/statefile.py) and the outbox hold what is needed; the
daemon calls these before the inputs are armed, so a press at start ranks as
the newest alarm and is judged test or real correctly.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping

from agent.events import Clock
from agent.indicators import Indicators
from agent.outbox import Outbox, OutboxRow
from agent.recorder import Recorder
from agent.statefile import State

log = logging.getLogger(__name__)

CARRIED_ALARMS = 64  # the newest pending alarms shown as sending again at start, and known to the centre's acks


def newest_alarms(outbox: Outbox, n: int) -> list[OutboxRow]:
    """The newest ``n`` pending real alarms, oldest first.

    The outbox reads the oldest rows above a seq, so this searches (by
    halving) for the highest seq with ``n`` alarms above it: one indexed read
    of ``n`` rows per bit of the top seq (25 ms with 50,000 rows pending).
    """
    rows = outbox.next_batch(0, n, urgent=True)
    if len(rows) < n:
        return rows
    lo, hi = 0, outbox.top_seq()  # n alarms above lo; none above hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        above = outbox.next_batch(mid, n, urgent=True)
        if len(above) == n:
            lo, rows = mid, above
        else:
            hi = mid
    return rows


def carry_alarms(
    before: State, *, outbox: Outbox, recorder: Recorder, indicators: Indicators, silent: Mapping[str, bool]
) -> None:
    """Alarms of the last run: the ones the centre may still acknowledge, and the ones still pending.

    The newest pending alarms, and the test presses the state file lists
    that are still pending, show ``sending`` again, so the person who
    pressed sees them go out and be acknowledged after a restart too; the
    latest delivered ones (the state file's) are carried as delivered, so
    the centre's ack of one is shown as it would have been without the
    restart.  All in the order they were pressed: the newest is what an ack
    shows on (:func:`in_press_order`).  ``silent``: per input name, whether
    its feedback is LED only.
    """
    pending = {r.id: r for r in newest_alarms(outbox, CARRIED_ALARMS)}
    pending.update((r.id, r) for r in listed_pending(before, outbox) if r.id not in pending)
    order = in_press_order(before, pending)
    recorder.remember(order, {**dict(before.alarm_seqs), **{r.id: r.seq for r in pending.values()}})
    any_silent = any(silent.values())  # a delivered alarm's input is not known: a silent input's ack must not sound
    for event_id in order:
        row = pending.get(event_id)
        if row is None:
            indicators.alarm_carried(event_id, silent=any_silent)
            continue
        try:
            source = json.loads(row.payload).get("source")
        except ValueError:
            source = None
        indicators.alarm_recorded(row.id, silent=silent.get(str(source), False))


def listed_pending(before: State, outbox: Outbox) -> list[OutboxRow]:
    """The state file's alarms still pending, test presses included (the urgent lane holds real alarms only).

    Found by the seq the state file keeps beside each id (at most a few dozen
    reads by primary key); a file an older agent wrote has none, and its
    alarms not in the urgent lane read as delivered, as they did then.
    """
    listed = set(before.alarms)
    found = []
    for event_id, seq in before.alarm_seqs:
        row = outbox.get(seq) if event_id in listed else None
        if row is not None and row.id == event_id:  # a replaced or recovered outbox may hold another event there
            found.append(row)
    return found


def in_press_order(before: State, pending: Mapping[str, OutboxRow]) -> list[str]:
    """The state file's alarms and the pending ones, oldest first.

    The state file keeps the latest alarms' ids in order, saved with the seq
    mark; a pending alarm it does not list is older than all of them if its
    seq is at or below that mark (beyond the ones kept), newer if above (pressed
    after the last save).
    """
    listed = set(before.alarms)
    rest = sorted((r for r in pending.values() if r.id not in listed), key=lambda r: r.seq)
    older = [r.id for r in rest if r.seq <= before.last_seq]
    newer = [r.id for r in rest if r.seq > before.last_seq]
    return [*older, *reversed(before.alarms), *newer]


def resumable_test_mode_s(before: State, clock: Clock, max_minutes: float) -> float | None:
    """Seconds of test mode to resume after a restart, or None (said in the log when it cannot be told).

    Within one boot the monotonic clock carries on across the restart; after
    a reboot only the wall clock can tell how much is left, and only when it
    was synchronised both when test mode was set (``test_until`` is saved
    only then) and now.
    """
    if before.boot_id == clock.boot_id and before.test_until_mono is not None:
        left = before.test_until_mono - clock.mono()
    elif before.test_until is not None:
        left = before.test_until - clock.wall()
        if left > 0 and not clock.synced():
            left = math.inf  # cannot be told: not resumed, and said so
    else:
        if before.test_until_mono is not None:
            log.warning(
                "test mode was on before the reboot, set while the clock was not synchronised: its end "
                "cannot be told, so it is not resumed; presses now go out as REAL alarms; set test mode again"
            )
        return None
    if left <= 0:
        return None
    if left > max_minutes * 60:
        log.warning(
            "test mode was on before the restart; not resumed (the clock is not synchronised, or reads "
            "earlier than when it was set): presses now go out as REAL alarms; set test mode again",
        )
        return None
    return float(left)
