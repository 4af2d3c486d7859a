"""Inbound commands (``R/cmd/{name}``): parsing, validation, rate limiting and replies.

The network is untrusted input: every check is strict and every refusal is a
:class:`~agent.errors.CommandError` whose reason is part of the API (the
centre shows it, tests match it).  Decisions worth knowing:

- **Replies.** A command with a usable id (a non-empty, encodable string; an
  over-long one is still echoed so the refusal can be matched) gets exactly one
  reply on ``R/reply``.  One without gets **none**: ``cmd_id: null`` matches
  nothing at the centre, and answering anonymous garbage would turn a broken
  sender's noise into ours.  It is still counted and logged.  ``test_mode``
  replies add an optional ``test_mode_until`` (ISO time or ``null``).
- **Oversized payloads** are refused before decoding; up to 16 times
  :data:`MAX_PAYLOAD` they are parsed once more only to find an id to answer.
- **Strictness.** ``v`` is the integer 1; ``minutes`` an integer 0-240 (not
  ``true``, not ``5.0``); ``event_id`` 32 lowercase hex digits; ``ts`` an
  optional string.  ``null`` counts as missing.  Unknown fields are ignored,
  but nesting deeper than :data:`MAX_DEPTH` levels is refused.
- **Obeying** is :mod:`agent.cmdguard`'s: a rate budget per name (checked
  before parsing), no retained or stale commands, each id obeyed once.
- **Counting.** ``accepted`` counts ``ok: true`` replies; ``rejected`` the rest.
- **Logging.** Each kind of refusal is logged once, then at most every 5
  minutes with how many went unlogged, so a flood cannot fill the journal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from agent.cmdguard import Budgets, LogThrottle, ReplayWindow, staleness
from agent.errors import CommandError
from agent.events import CONTRACT_VERSION, is_event_id, iso_ms, kernel_clock_synced

log = logging.getLogger(__name__)

NAMES: frozenset[str] = frozenset({"ack", "ping", "test_mode"})
MAX_PAYLOAD = 4096
MAX_ID = 128
MAX_MINUTES = 240
MAX_DEPTH = 8

_KNOWN = ", ".join(sorted(NAMES))
_FIELDS = {"ack": ("event_id",), "ping": (), "test_mode": ("minutes",)}
_NEEDS = {"event_id": "the 32-hex id of the event it acknowledges", "minutes": f"minutes 0-{MAX_MINUTES} (0 ends it)"}
_PEEK_LIMIT = 16 * MAX_PAYLOAD
_TOO_DEEP = f"nesting too deep; at most {MAX_DEPTH} levels are allowed"
_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
_LOG_EVERY_S = 300.0


class _RefusedError(CommandError):
    """A refusal that also names its kind, so the handler logs each kind once, not each message."""

    def __init__(self, kind: str, reason: str, cmd_id: str | None = None) -> None:
        super().__init__(reason, cmd_id)
        self.kind = kind


@dataclass(frozen=True)
class Command:
    """One valid command, ready to carry out.

    One class for all three (same envelope, one field apart); construction
    validates (raising :class:`CommandError`), so a ``Command`` is a valid one.

    Attributes:
        name: ``ack``, ``ping`` or ``test_mode`` (the ``cmd/{name}`` topic level).
        id: the command's id, echoed as ``cmd_id`` in the reply.
        event_id: ``ack`` only: the event the centre has seen (32 lowercase hex).
        minutes: ``test_mode`` only: how long, in minutes, 0-240; 0 ends test mode.
        ts: when the centre sent it, as the centre wrote it.

    """

    name: str
    id: str
    event_id: str | None = None
    minutes: int | None = None
    ts: str | None = None

    def __post_init__(self) -> None:
        cmd_id = _reply_id(self.id)
        problem = _id_problem(self.id)
        if problem is not None:
            raise _RefusedError("bad id", problem, cmd_id)
        if self.name not in NAMES:
            raise _RefusedError("unknown command", f"unknown command {_quote(self.name)}; known: {_KNOWN}", cmd_id)
        if self.ts is not None and not isinstance(self.ts, str):
            raise _RefusedError("field ts", f"field 'ts' must be a string, got {_show(self.ts)}", cmd_id)
        for field, (valid, expected) in _CHECKS.items():
            value, kind = getattr(self, field), f"field {field}"
            if field not in _FIELDS[self.name]:
                if value is not None:
                    raise _RefusedError(kind, f"field '{field}' does not belong to {self.name}", cmd_id)
            elif value is None:
                raise _RefusedError(kind, f"field '{field}' is missing; {self.name} needs {_NEEDS[field]}", cmd_id)
            elif not valid(value):
                raise _RefusedError(kind, f"field '{field}' must be {expected}, got {_show(value)}", cmd_id)


def parse_command(name: str, payload: bytes) -> Command:
    """Turn one inbound message into a :class:`Command`, or say exactly why not.

    Args:
        name: the ``{name}`` level of the ``R/cmd/{name}`` topic.
        payload: the raw message payload.

    Returns:
        The valid command.

    Raises:
        CommandError: for every refusal, and nothing else escapes (decoding
            errors, deep nesting, even a bug in the checks); ``cmd_id`` is set
            whenever a usable id could be read.

    """
    try:
        return _parse(name, payload)
    except CommandError:
        raise
    except Exception as exc:  # a bug in the checks must still come out as a refusal, never a crash
        raise _RefusedError("unreadable", f"command could not be read ({type(exc).__name__})") from exc


def _parse(name: str, payload: bytes) -> Command:
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise _RefusedError("too large", f"payload is {size} bytes; the limit is {MAX_PAYLOAD}", _peek_id(payload))
    if size == 0:
        raise _RefusedError("not json", "payload is empty; a command is a JSON object")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _RefusedError("not utf-8", "payload is not UTF-8", _peek_id(payload)) from None
    try:
        doc = json.loads(text)
    except RecursionError:  # json's C scanner recurses: about 1000 levels fit in 4 KiB
        raise _RefusedError("too deep", _TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        raise _RefusedError("not json", f"payload is not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(doc, dict):
        raise _RefusedError("not object", f"payload is not a JSON object (it is {_JSON_TYPES.get(type(doc), 'null')})")
    cmd_id = _reply_id(doc.get("id"))
    if _too_deep(doc, MAX_DEPTH):
        raise _RefusedError("too deep", _TOO_DEEP, cmd_id)
    v, speaks = doc.get("v"), f"this agent speaks v={CONTRACT_VERSION}"
    if v is None:
        raise _RefusedError("version", f"field 'v' is missing; {speaks}", cmd_id)
    if type(v) is not int or v != CONTRACT_VERSION:
        raise _RefusedError("version", f"unsupported version v={_show(v)}; {speaks}", cmd_id)
    return Command(
        name=name,
        id=cast("str", doc.get("id")),  # validated once, by Command itself
        event_id=doc.get("event_id") if name == "ack" else None,
        minutes=doc.get("minutes") if name == "test_mode" else None,
        ts=doc.get("ts"),
    )


def _peek_id(payload: bytes) -> str | None:
    """Best effort: the top-level id of a payload refused before parsing, to answer it."""
    if len(payload) > _PEEK_LIMIT:
        return None
    try:
        doc = json.loads(payload.decode("utf-8", "replace"))
        cmd_id = _reply_id(doc.get("id")) if isinstance(doc, dict) else None
    except Exception:  # anything unreadable simply has no id
        return None
    return None if cmd_id is None or "\ufffd" in cmd_id else cmd_id


def _reply_id(value: object) -> str | None:
    """The id to echo, if any: a non-empty string that can be encoded (no lone surrogates)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _id_problem(value: object) -> str | None:  # checked once, in Command.__post_init__
    if value is None:
        return "field 'id' is missing; every command needs one so its reply can be matched"
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID:
        return f"field 'id' must be a string of 1-{MAX_ID} characters, got {_show(value)}"
    if _reply_id(value) is None:
        return "field 'id' must be valid Unicode text"
    return None


_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "event_id": (is_event_id, "32 lowercase hex digits"),
    "minutes": (lambda v: type(v) is int and 0 <= v <= MAX_MINUTES, f"an integer 0-{MAX_MINUTES}"),
}


def _too_deep(doc: object, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (the top object is level 1); no recursion."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        children: Iterable[object] = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _show(value: object) -> str:
    """A value as JSON, cut to 40 characters and escaped, so reasons stay short and single-line."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except Exception:  # e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _quote(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:37] + "...")


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
            self._refuse(name, exc.cmd_id, exc.kind if isinstance(exc, _RefusedError) else "refused", exc.reason, now)
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
                _quote(name),
                f" id {_quote(cmd_id)}" if cmd_id else "",
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
                log.exception("could not queue the reply to command %s; carrying on", _quote(cmd_id))


def _id_of(name: str, payload: bytes) -> str | None:
    """The id to answer a command that will not be carried out (parse errors included)."""
    try:
        return parse_command(name, payload).id
    except CommandError as exc:
        return exc.cmd_id


__all__ = ["MAX_MINUTES", "MAX_PAYLOAD", "NAMES", "Command", "CommandError", "CommandHandler", "parse_command"]
