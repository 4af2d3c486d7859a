"""Reading the marked YAML key by key, and the small validators the schema is built from.

The file arrives as :class:`MarkedMap` / :class:`MarkedList` values that
remember the line of every key and item (agent/config/marked.py), because a
technician standing at a gate needs ``gate.yaml:14: inputs[0].pin: ...`` to fix
a typo.  A :class:`Section` reads one mapping and collects every problem with
its line and key path, so all are reported together.  Validators either return
a coerced value or raise :class:`Invalid` whose text says what was expected
and, where we can guess, the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

from agent.config.marked import UNREADABLE, Invalid, MarkedList, MarkedMap, load_marked
from agent.errors import printable

T = TypeVar("T")
D = TypeVar("D")

_MISSING = object()


@dataclass
class Ctx:
    """Collects every problem of one file so all are reported together."""

    file: Path
    problems: list[str] = field(default_factory=list)

    def error(self, line: int, path: str, message: str) -> None:
        where = printable(path) or "(top level)"
        self.problems.append(f"{printable(str(self.file))}:{line}: {where}: {printable(message)}")


class Section:
    """Reads one mapping of the config, key by key, and reports unused keys.

    ``get`` records each key it was asked for; ``done`` turns every other key
    into an "unknown key" problem with a did-you-mean.
    """

    def __init__(self, ctx: Ctx, value: Any, path: str, line: int) -> None:
        self.ctx = ctx
        self.path = path
        self.line = line
        self.ok = True
        self._seen: set[str] = set()
        if value is UNREADABLE:  # reported already
            self.ok = False
            value = None
        if value is None:
            value = MarkedMap(line)
        if not isinstance(value, MarkedMap):
            ctx.error(line, path, f"expected a mapping of keys, got {_describe(value)}")
            self.ok = False
            value = MarkedMap(line)
        self.data: MarkedMap = value

    def key_line(self, key: str) -> int:
        return self.data.key_lines.get(key, self.data.line)

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None and self.data[key] is not UNREADABLE

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.data.get(key)

    @overload
    def get(self, key: str, check: Callable[[Any], T]) -> T: ...

    @overload
    def get(self, key: str, check: Callable[[Any], T], default: D) -> T | D: ...

    def get(self, key: str, check: Callable[[Any], T], default: Any = _MISSING) -> Any:
        """Return the checked value of ``key``, or ``default`` when it is absent.

        A problem is recorded (and ``default``, or None, returned) when the value
        is invalid or a required key is missing, so reading carries on.
        """
        self._seen.add(key)
        if self.data.get(key) is UNREADABLE:  # its problem is on record already
            self.ok = False
            return None if default is _MISSING else default
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                self.ctx.error(self.data.line, self.sub(key), "required key is missing")
                self.ok = False
                return None
            return default
        try:
            return check(self.data[key])
        except Invalid as exc:
            self.ctx.error(self.key_line(key), self.sub(key), str(exc))
            self.ok = False
            return None if default is _MISSING else default

    def section(self, key: str) -> Section:
        self._seen.add(key)
        return Section(self.ctx, self.data.get(key), self.sub(key), self.key_line(key))

    def items(self, key: str) -> Iterator[tuple[Section, int]]:
        """Yield a :class:`Section` for each mapping in the list under ``key``."""
        self._seen.add(key)
        value = self.data.get(key)
        if value is None or value is UNREADABLE:
            return
        if not isinstance(value, MarkedList):
            self.ctx.error(self.key_line(key), self.sub(key), f"expected a list, got {_describe(value)}")
            self.ok = False
            return
        for i, item in enumerate(value):
            yield Section(self.ctx, item, f"{self.sub(key)}[{i}]", value.item_lines[i]), i

    def done(self, allowed: tuple[str, ...] = ()) -> None:
        known = tuple(self._seen) + allowed
        for key in self.data:
            if key in known:
                continue
            hint = _close(key, known, 0.6)
            fix = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(sorted(known))}"
            self.ctx.error(self.key_line(key), self.sub(key), f"unknown key; {fix}")
            self.ok = False


def _close(word: str, known: tuple[str, ...], cutoff: float) -> list[str]:
    import difflib  # noqa: PLC0415 - only a config with a mistake pays for it (the daemon's memory)

    return difflib.get_close_matches(word, known, n=1, cutoff=cutoff)


def _describe(value: Any) -> str:
    if isinstance(value, MarkedMap):
        return "a mapping"
    if isinstance(value, MarkedList):
        return "a list"
    if value is None:
        return "nothing"
    return f"{value!r}"


# ---- validators: each returns the coerced value or raises Invalid ----------


def string(value: Any) -> str:
    """A plain string; numbers and booleans are refused so nothing is guessed."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        raise Invalid(f"expected text, got {value!r}; did you forget quotes around the value?")
    raise Invalid(f"expected text, got {_describe(value)}")


def nonempty(value: Any) -> str:
    s = string(value)
    if not s.strip():
        raise Invalid("must not be empty")
    return s


def mqtt_text(value: Any) -> str:
    """A client id or user name, as a broker will take it.

    MQTT carries it as UTF-8 of at most 65,535 bytes, and brokers close the
    connection of a client whose string holds a NUL or other control character
    (a YAML ``|`` block adds a newline): the agent would buffer its alarms forever.
    """
    s = nonempty(value)
    bad = sorted({c for c in s if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise Invalid(f"contains control characters ({shown}); write it on one line without them")
    if len(s.encode("utf-8", "surrogatepass")) > 65535:
        raise Invalid("longer than MQTT allows (65,535 bytes)")
    return s


def url_check(schemes: tuple[str, ...], example: str, secret_keys: str) -> Callable[[Any], str]:
    """A URL with one of ``schemes`` and a host; no password in it, and none shown in an error."""

    def check(value: Any) -> str:
        url = nonempty(value)
        try:
            parts = urlsplit(url)
            port = parts.port  # raises for a port that is no number or out of range
        except ValueError as exc:
            raise Invalid(f"expected a URL like {example}, got {_without_password(url)!r} ({exc})") from None
        if parts.password:
            raise Invalid(f"do not put a password in the URL; use {secret_keys}")
        if parts.scheme not in schemes or not parts.hostname:
            raise Invalid(f"expected a URL like {example}, got {_without_password(url)!r}")
        if port == 0:
            raise Invalid(f"port 0 is no port a camera listens on, in {_without_password(url)!r}")
        return url

    return check


def _without_password(url: str) -> str:
    """``url`` with everything between its scheme and its last ``@`` blanked: an error must not show a password.

    Blanked whatever the URL's shape (``rtsp:admin:pw@cam`` has no ``//``, so no user part to parse).
    """
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme = head.split(":", 1)[0] if ":" in head else ""
    return f"{scheme}:***@{tail}" if scheme else f"***@{tail}"


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise Invalid(f"expected true or false, got {_describe(value)}")


def integer(lo: int, hi: int, what: str = "a whole number") -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected {what} {lo}-{hi}, got {_describe(value)}")
        if not lo <= value <= hi:
            raise Invalid(f"expected {what} {lo}-{hi}, got {value}")
        return value

    return check


def number(lo: float, hi: float, unit: str = "") -> Callable[[Any], float]:
    suffix = f" {unit}" if unit else ""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"expected a number {lo:g}-{hi:g}{suffix}, got {_describe(value)}")
        if not lo <= value <= hi:
            raise Invalid(f"expected a number {lo:g}-{hi:g}{suffix}, got {value:g}")
        return float(value)

    return check


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, (str, bool, int, float)):  # non-scalars are refused before any formatting
            raise Invalid(f"expected one of {', '.join(choices)}, got {_describe(value)}")
        s = value if isinstance(value, str) else str(value)
        if s in choices:
            return s
        hint = _close(s, choices, 0.5)
        fix = f"; did you mean '{hint[0]}'?" if hint else ""
        raise Invalid(f"expected one of {', '.join(choices)}, got {_describe(value)}{fix}")

    return check


_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def topic_id(value: Any) -> str:
    """An id that becomes an MQTT topic level (site, device, input and camera names)."""
    s = string(value)
    if not _ID.fullmatch(s):
        bad = "".join(sorted({c for c in s if c in _RESERVED}))
        why = f" ({_why(bad)})" if bad else ""
        raise Invalid(
            f"expected lower-case letters, digits and '-', starting with a letter or digit, "
            f"at most 63 characters, got {s!r}{why}",
        )
    return s


_RESERVED = "+#$/."
_PREFIX_LEVEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def _why(bad: str) -> str:
    """Why each of these characters cannot be used, for the technician who typed them."""
    reasons = []
    if set(bad) & set("+#"):
        reasons.append("'+' and '#' are MQTT wildcards")
    if "$" in bad:
        reasons.append("brokers reserve '$' topics for themselves")
    if "/" in bad:
        reasons.append("'/' separates topic levels")
    if "." in bad:
        reasons.append("RabbitMQ maps '.' to '/', so two devices could share a topic")
    return "; ".join(reasons)


def topic_prefix(value: Any) -> str:
    """The topic prefix: one or more levels of letters, digits, '_' and '-', joined by '/'."""
    s = nonempty(value)
    if not all(_PREFIX_LEVEL.fullmatch(level) for level in s.split("/")):
        bad = "".join(sorted({c for c in s if c in _RESERVED.replace("/", "")}))
        why = f" ({_why(bad)})" if bad else ""
        raise Invalid(
            f"expected topic levels like 'campus' or 'org/campus' (letters, digits, '_' and '-' "
            f"between single '/'), got {s[:80]!r}{why}"
        )
    return s


# The marked values and load_marked are agent/config/marked.py's: the config's readers take them from here too.
__all__ = [
    "UNREADABLE",
    "Ctx",
    "Invalid",
    "MarkedList",
    "MarkedMap",
    "Section",
    "boolean",
    "integer",
    "load_marked",
    "mqtt_text",
    "nonempty",
    "number",
    "one_of",
    "string",
    "topic_id",
    "topic_prefix",
    "url_check",
]
