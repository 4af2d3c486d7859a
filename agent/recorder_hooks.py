"""What the rest of the agent hears from the recorder: the :class:`Hooks` the daemon wires in.

Kept apart from :mod:`agent.recorder` so a part that only fills in or reads
the hooks (the daemon's wiring, a test's) does not need the recording path,
and so the list of what a recorded event sets off reads in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.outbox_rows import OutboxRow


def _nothing(*_args: object) -> None:
    return None


@dataclass
class Hooks:
    """What the rest of the agent hears from the recorder; a hook that raises is logged, never fatal."""

    wake: Callable[[], None] = _nothing  # the sender: something new to send
    # The sender, handed the rows just committed (it may publish them at once); wake is not called then.
    offer: Callable[[list[OutboxRow]], None] | None = None
    changed: Callable[[], None] = _nothing  # the heartbeat: the status changed
    alarm_recorded: Callable[[str, str], None] = _nothing  # (event id, source): LED/buzzer
    alarm_delivered: Callable[[str], None] = _nothing  # event id
    noted: Callable[[str, str, bool], None] = _nothing  # (input name, ts, test): the status's last_event
    mark: Callable[[], None] = _nothing  # seqs were reserved: save the high-water mark now
