"""Strict parsing of an inbound command (``R/cmd/{name}``) into a valid :class:`Command`.

The network is untrusted input: every check is strict and every refusal is a
:class:`~agent.errors.CommandError` whose reason is part of the API (the
centre shows it, tests match it).  What it is then done with (rate budget,
replay window, the reply) is :mod:`agent.commands`'.

- **Oversized payloads** are refused before decoding; up to 16 times
  :data:`MAX_PAYLOAD` they are parsed once more only to find an id to answer.
- **Strictness.** ``v`` is the integer 1; ``minutes`` an integer 0-240 (not
  ``true``, not ``5.0``); ``event_id`` 32 lowercase hex digits; ``ts`` an
  optional string.  ``null`` counts as missing.  Unknown fields are ignored,
  but nesting deeper than :data:`MAX_DEPTH` levels is refused.
- **The id** is validated once, by :class:`Command` itself; a refusal carries
  the id to answer whenever a usable one (a non-empty, encodable string; an
  over-long one is still echoed so the refusal can be matched) could be read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from agent.errors import CommandError
from agent.events import CONTRACT_VERSION, is_event_id

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


class RefusedError(CommandError):
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
            raise RefusedError("bad id", problem, cmd_id)
        if self.name not in NAMES:
            raise RefusedError("unknown command", f"unknown command {quote_name(self.name)}; known: {_KNOWN}", cmd_id)
        if self.ts is not None and not isinstance(self.ts, str):
            raise RefusedError("field ts", f"field 'ts' must be a string, got {_show(self.ts)}", cmd_id)
        for field, (valid, expected) in _CHECKS.items():
            value, kind = getattr(self, field), f"field {field}"
            if field not in _FIELDS[self.name]:
                if value is not None:
                    raise RefusedError(kind, f"field '{field}' does not belong to {self.name}", cmd_id)
            elif value is None:
                raise RefusedError(kind, f"field '{field}' is missing; {self.name} needs {_NEEDS[field]}", cmd_id)
            elif not valid(value):
                raise RefusedError(kind, f"field '{field}' must be {expected}, got {_show(value)}", cmd_id)


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
        raise RefusedError("unreadable", f"command could not be read ({type(exc).__name__})") from exc


def _parse(name: str, payload: bytes) -> Command:
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise RefusedError("too large", f"payload is {size} bytes; the limit is {MAX_PAYLOAD}", _peek_id(payload))
    if size == 0:
        raise RefusedError("not json", "payload is empty; a command is a JSON object")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise RefusedError("not utf-8", "payload is not UTF-8", _peek_id(payload)) from None
    try:
        doc = json.loads(text)
    except RecursionError:  # json's C scanner recurses: about 1000 levels fit in 4 KiB
        raise RefusedError("too deep", _TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        raise RefusedError("not json", f"payload is not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(doc, dict):
        raise RefusedError("not object", f"payload is not a JSON object (it is {_JSON_TYPES.get(type(doc), 'null')})")
    cmd_id = _reply_id(doc.get("id"))
    if _too_deep(doc, MAX_DEPTH):
        raise RefusedError("too deep", _TOO_DEEP, cmd_id)
    v, speaks = doc.get("v"), f"this agent speaks v={CONTRACT_VERSION}"
    if v is None:
        raise RefusedError("version", f"field 'v' is missing; {speaks}", cmd_id)
    if type(v) is not int or v != CONTRACT_VERSION:
        raise RefusedError("version", f"unsupported version v={_show(v)}; {speaks}", cmd_id)
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


def quote_name(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:37] + "...")
