"""The agent's exceptions: one base, one leaf per kind of failure.

Each leaf also inherits the builtin it resembles, so callers that only know
Python's own exceptions still catch it.  :func:`printable` makes any text a
person will read (an error, a detail quoted from a camera) safe for a terminal.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped: one line, nothing a terminal acts on.

    Python's ``isprintable`` is false for C0 and C1 controls, bidi overrides
    and other format characters, and line and paragraph separators.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """The configuration file is missing, unreadable or invalid.

    ``problems`` holds one line per problem, each ``file:line: key.path: what is
    wrong``, so a technician can fix them all in one pass.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class OutboxError(AgentError, OSError):
    """The durable outbox could not be opened or written."""


class OutboxFullError(OutboxError):
    """The outbox has no room left for this event, even after eviction."""


class OutboxBusyError(OutboxError):
    """A commit has held the outbox past a reader's wait (a slow disk, another process's lock)."""


class HardwareError(AgentError, RuntimeError):
    """A GPIO pin or other device could not be set up."""


class CommandError(AgentError, ValueError):
    """An inbound command was refused; the message says why."""

    def __init__(self, reason: str, cmd_id: str | None = None) -> None:
        self.reason = reason
        self.cmd_id = cmd_id
        super().__init__(reason)


class ControlError(AgentError, ConnectionError):
    """The local control socket could not be reached or answered an error."""


class CameraError(AgentError, RuntimeError):
    """A camera probe failed; the message is the one-line detail for status."""
