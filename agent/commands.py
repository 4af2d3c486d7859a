"""Inbound commands (``R/cmd/{name}``): budget, carry out and answer each one, counting and logging refusals.

The network is untrusted input: every check is strict and every refusal is a
:class:`~agent.errors.CommandError` whose reason is part of the API (the
centre shows it, tests match it).  Decisions worth knowing:

- **Replies.** A command with a usable id (a non-empty, encodable string; an
  over-long one is still echoed so the refusal can be matched) gets exactly one
  reply on ``R/reply``.  One without gets **none**: ``cmd_id: null`` matches
  nothing at the centre, and answering anonymous garbage would turn a broken
  sender's noise into ours.  It is still counted and logged.  ``test_mode``
  replies add an optional ``test_mode_until`` (ISO time or ``null``).
- **Parsing** is :mod:`agent.cmdparse`'s: size, UTF-8, JSON, depth, version,
  and each field strictly (``minutes`` an integer 0-:data:`MAX_MINUTES`).
- **Obeying** is :mod:`agent.cmdguard`'s: a rate budget per name (checked
  before parsing), no retained or stale commands, each id obeyed once.
- **Counting.** ``accepted`` counts ``ok: true`` replies; ``rejected`` the rest.
- **Logging.** Each kind of refusal is logged once, then at most every 5
  minutes with how many went unlogged, so a flood cannot fill the journal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.cmdguard import Budgets, LogThrottle, ReplayWindow, staleness
from agent.cmdparse import (
    MAX_DEPTH,
    MAX_ID,
    MAX_MINUTES,
    MAX_PAYLOAD,
    NAMES,
    Command,
    RefusedError,
    parse_command,
    quote_name,
)
from agent.errors import CommandError
from agent.events import CONTRACT_VERSION, iso_ms, kernel_clock_synced

log = logging.getLogger(__name__)

_LOG_EVERY_S = 300.0


class CommandHandler:
    """Answers inbound commands: validate, rate-limit, carry out, reply, count.

    :meth:`handle` runs on paho's network thread: it does no I/O itself, and
    the callbacks must return quickly (hand work off, never wait on the network).

    Args:
        on_ack: called with the event id; False means this agent has no record
            of that event, answered ``ok: false``.
        on_ping: asks for a fresh status to be published.
        on_test_mode: called with minutes (0 ends it); returns the end as ISO
            time, or None when test mode is off.
        reply: publishes one reply document on ``R/reply``.
        defer_reply: given the sending of a ``test_mode`` reply, runs it once test
            mode's new end is saved (another thread; the reply must not promise
            what a restart would undo); None sends it at once.
        rate_per_min: commands a minute carried out, per command name; more are refused.
        wall: the wall clock (seconds), for the replies' ``ts`` and the commands' age.
        mono: the monotonic clock (seconds), for the rate limit, replay window and log throttling.
        synced: whether the wall clock is NTP-synchronised (only then is a command's ``ts`` judged).

    A callback may raise :class:`CommandError` to refuse with its own reason;
    any other exception is logged and answered as a failure.

    """

    def __init__(
        self,
        *,
        on_ack: Callable[[str], bool],
        on_ping: Callable[[], None],
        on_test_mode: Callable[[int], str | None],
        reply: Callable[[dict[str, Any]], None],
        rate_per_min: int,
        defer_reply: Callable[[Callable[[], None]], None] | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        synced: Callable[[], bool] = kernel_clock_synced,
    ) -> None:
        if rate_per_min < 1:
            raise ValueError(f"rate_per_min must be at least 1, got {rate_per_min}")
        self._on_ack = on_ack
        self._on_ping = on_ping
        self._on_test_mode = on_test_mode
        self._reply = reply
        self._defer_reply = defer_reply
        self._rate = rate_per_min
        self._wall = wall
        self._mono = mono
        self._synced = synced
        self._budgets = Budgets(NAMES, rate_per_min, mono())
        self._replays = ReplayWindow()
        self._lock = threading.Lock()  # handle() on paho's thread, counters() on the heartbeat's
        self._accepted = 0
        self._rejected = 0
        self._logged = LogThrottle(_LOG_EVERY_S)

    def handle(self, name: str, payload: bytes, *, retained: bool = False) -> None:
        """Validate, carry out and answer one command; never raises.

        Args:
            name: the ``{name}`` level of the ``R/cmd/{name}`` topic.
            payload: the raw message payload.
            retained: the message's retain flag; a retained command is refused.

        """
        try:
            self._handle(name, payload, retained=retained)
        except Exception as exc:  # only a bug lands here; paho's thread must live on
            self._refuse(name, None, "internal", "command handling failed", self._mono(), exc_info=exc)

    def counters(self) -> dict[str, int]:
        """``{"accepted": n, "rejected": n}`` since start, for the status document's ``commands``."""
        with self._lock:
            return {"accepted": self._accepted, "rejected": self._rejected}

    def __repr__(self) -> str:
        c = self.counters()
        return f"<CommandHandler accepted={c['accepted']} rejected={c['rejected']} limit={self._rate}/min>"

    def _handle(self, name: str, payload: bytes, *, retained: bool) -> None:
        now = self._mono()
        with self._lock:
            allowed, answer = self._budgets.admit(name, now)
        if not allowed:
            reason = f"rate limited: more than {self._rate} commands a minute"
            self._refuse(name, _id_of(name, payload) if answer else None, "rate limited", reason, now)
            return
        try:
            cmd = parse_command(name, payload)
        except CommandError as exc:
            self._refuse(name, exc.cmd_id, exc.kind if isinstance(exc, RefusedError) else "refused", exc.reason, now)
            return
        stale = staleness(cmd.ts, self._wall(), retained=retained, synced=retained or self._synced())
        if stale is not None:
            self._refuse(cmd.name, cmd.id, "retained" if retained else "stale", stale, now)
            return
        with self._lock:
            repeated = self._replays.check_and_add(cmd.id, now)
        if repeated is not None:
            self._refuse(cmd.name, cmd.id, "repeated id", repeated, now)
            return
        extra: dict[str, Any] = {}
        crash: Exception | None = None
        try:
            error = self._carry_out(cmd, extra)
        except CommandError as exc:
            error = exc.reason
        except Exception as exc:
            error, crash = f"the agent could not carry out {cmd.name} ({type(exc).__name__})", exc
        if error is not None:
            kind = f"{cmd.name} {'failed' if crash else 'refused'}"
            self._refuse(cmd.name, cmd.id, kind, error, now, exc_info=crash)
            return
        with self._lock:
            self._accepted += 1
        if cmd.name == "test_mode" and self._defer_reply is not None:
            cmd_id = cmd.id
            self._defer_reply(lambda: self._send(cmd_id, None, now, extra))
            return
        self._send(cmd.id, None, now, extra)

    def _carry_out(self, cmd: Command, extra: dict[str, Any]) -> str | None:
        """Run the command's callback; return a refusal reason, or None when done."""
        if cmd.name == "ack":
            assert cmd.event_id is not None
            if not self._on_ack(cmd.event_id):
                return f"unknown event {cmd.event_id}; this agent has no record of it"
            log.info("central acknowledged event %s (command %r)", cmd.event_id, cmd.id)
        elif cmd.name == "ping":
            self._on_ping()
            log.debug("ping (command %r): status requested", cmd.id)
        else:
            assert cmd.minutes is not None
            until = self._on_test_mode(cmd.minutes)
            extra["test_mode_until"] = until
            log.info("test mode %s by command %r", f"on until {until}" if until else "off", cmd.id)
        return None

    def _refuse(
        self,
        name: str,
        cmd_id: str | None,
        kind: str,
        reason: str,
        now: float,
        *,
        exc_info: Exception | None = None,
    ) -> None:
        with self._lock:
            self._rejected += 1
        hidden = self._due(kind, now)
        if hidden is not None:
            log.warning(
                "ignored command %s%s: %s (%s)%s; more like it are only counted (status commands.rejected) "
                "and logged at most every %.0f s",
                quote_name(name),
                f" id {quote_name(cmd_id)}" if cmd_id else "",
                reason,
                "answered ok:false" if cmd_id else "not answered",
                f"; {hidden} more since the last report" if hidden else "",
                _LOG_EVERY_S,
                exc_info=exc_info,
            )
        if cmd_id is not None:
            self._send(cmd_id, reason, now)

    def _due(self, kind: str, now: float) -> int | None:
        with self._lock:
            return self._logged.due(kind, now)

    def _send(self, cmd_id: str, error: str | None, now: float, extra: dict[str, Any] | None = None) -> None:
        try:
            self._reply(
                {
                    "v": CONTRACT_VERSION,
                    "cmd_id": cmd_id,
                    "ok": error is None,
                    "error": error,
                    "ts": iso_ms(self._wall()),
                    **(extra or {}),
                }
            )
        except Exception:  # a reply that cannot be queued must not take paho's thread down
            if self._due("reply failed", now) is not None:
                log.exception("could not queue the reply to command %s; carrying on", quote_name(cmd_id))


def _id_of(name: str, payload: bytes) -> str | None:
    """The id to answer a command that will not be carried out (parse errors included)."""
    try:
        return parse_command(name, payload).id
    except CommandError as exc:
        return exc.cmd_id


__all__ = [
    "MAX_DEPTH",
    "MAX_ID",
    "MAX_MINUTES",
    "MAX_PAYLOAD",
    "NAMES",
    "Command",
    "CommandError",
    "CommandHandler",
    "parse_command",
]
