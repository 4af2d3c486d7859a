"""What the monitor prints, and how it reads payloads it cannot trust.

Shared by :mod:`agent.central.fleet` (events and device states) and :mod:`agent.central.acks`
(replies): the :class:`Line` value, clock times and durations for people, and
:func:`decode`, which turns any payload into a JSON object or a reason, never
an exception: a broken device must not take the monitor down.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.events import iso_ms

MAX_PAYLOAD = 65_536
MAX_DEPTH = 32  # nesting levels of a payload (the top object is 1); the contract needs 6 (link.stats)
MAX_REASON = 200  # characters of a device's refusal reason shown
KEY_WIDTH = 20
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Everything a terminal may act on: C0/C1 controls and DEL (Cc), format characters such as
# bidi overrides (Cf), line/paragraph separators (Zl, Zp), and unassigned or surrogate code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def valid_id(text: str) -> bool:
    """True for a contract site or device id; they become topic levels."""
    return _ID.fullmatch(text) is not None


def valid_type(text: str) -> bool:
    """True for a well-formed event type (the contract's are lower-case words with ``_``).

    Unknown but well-formed types are shown: a newer agent may send one.
    """
    return _TYPE.fullmatch(text) is not None


def _unsafe(ch: str) -> bool:
    return ch in _NAMED or (not ch.isprintable() and ch != " ") or unicodedata.category(ch) in _UNSAFE_CATEGORIES


def escape(text: str, *, backslash: bool = True) -> str:
    r"""``text`` with every character a terminal could act on made visible.

    ``ESC`` becomes ``\x1b``, CR ``\r``, U+202E ``\u202e``, a backslash ``\\``: a
    device cannot move the operator's cursor, erase a line or forge one.
    Printable text (accents, CJK, emoji) is kept as it is.  ``backslash``
    false leaves backslashes alone: the last pass over a line whose fields
    were escaped already must not escape them twice.
    """
    if text.isascii() and text.isprintable() and (not backslash or "\\" not in text):
        return text  # the common case, checked in C
    out: list[str] = []
    for ch in text:
        if not _unsafe(ch) or (ch == "\\" and not backslash):
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def json_line(record: Mapping[str, Any]) -> str:
    """``record`` as one line of JSON with no character a terminal could act on.

    ``json.dumps`` escapes C0 controls but, without ``ensure_ascii``, leaves C1
    controls (U+009B is a one-byte CSI), bidi overrides and U+2028 raw.
    """
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity from a payload (Python reads them, and 1e400 as inf): not JSON
        text = json.dumps(_finite(record), ensure_ascii=False, allow_nan=False)
    if text.isascii() and text.isprintable():
        return text
    return "".join(_json_escape(ch) if ch != "\\" and _unsafe(ch) else ch for ch in text)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float made ``None`` (JSON ``null``), at any depth.

    A loop, not recursion: a record nesting hundreds of levels around a NaN
    (``json.loads`` takes them) must not end the print loop in a RecursionError.
    """
    root: list[Any] = [value]
    todo: list[tuple[Any, list[Any] | dict[Any, Any], Any]] = [(value, root, 0)]
    while todo:
        node, parent, slot = todo.pop()
        if isinstance(node, float):
            parent[slot] = node if math.isfinite(node) else None
        elif isinstance(node, Mapping):
            copy: dict[Any, Any] = dict(node)
            parent[slot] = copy
            todo.extend((v, copy, k) for k, v in copy.items())
        elif isinstance(node, list | tuple):
            items = list(node)
            parent[slot] = items
            todo.extend((v, items, i) for i, v in enumerate(items))
    return root[0]


def _json_escape(ch: str) -> str:
    n = ord(ch)
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    n -= 0x10000  # JSON spells astral code points as a surrogate pair
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


class LineKind(StrEnum):
    EVENT = "event"
    STATE = "state"
    REPLY = "reply"
    WARNING = "warning"
    DEVICE = "device"
    ACK = "ack"
    LINK = "link"
    SUMMARY = "summary"
    ALARM = "alarm"
    PHOTO = "photo"
    AVAILABILITY = "availability"


@dataclass(frozen=True)
class Alarm:
    """A panic or tamper event the centre may acknowledge; ``test`` for a press made in test mode."""

    site: str
    device: str
    event_id: str
    type: str
    arrival: float
    test: bool = False
    mono: float | None = None  # the arrival on the monitor's monotonic clock: its age does not follow a clock step

    def age_s(self, now: float, mono: float | None) -> float:
        """Seconds since it arrived: on the monotonic clock when both times are on it, else the wall clock's."""
        if self.mono is not None and mono is not None:
            return mono - self.mono
        return now - self.arrival

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}"


@dataclass(frozen=True)
class Line:
    """One thing to print: ``text`` for people, ``record`` for ``--json``.

    ``alarm`` is set on the event line of a panic or tamper, so the runner can
    offer it for acknowledgement without parsing text.
    """

    kind: LineKind
    text: str
    record: Mapping[str, Any]
    alarm: Alarm | None = None


def clock_text(at: float, tz: dt.tzinfo | None) -> str:
    """``HH:MM:SS.mmm`` of a wall time in ``tz`` (``None``: local time)."""
    t = dt.datetime.fromtimestamp(at, tz)
    return t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def device_key(site: str, device: str) -> str:
    """``site/device``, padded so that printed lines line up."""
    return f"{site}/{device}".ljust(KEY_WIDTH)


def warning_line(at: float, text: str, tz: dt.tzinfo | None) -> Line:
    return Line(
        LineKind.WARNING,
        f"{clock_text(at, tz)}  WARNING  {text}",
        {"kind": "warning", "arrived": iso_ms(at), "text": text},
    )


def decode(payload: bytes) -> dict[str, Any] | str:
    """The JSON object in ``payload``, or a short reason why there is none."""
    if len(payload) > MAX_PAYLOAD:
        return f"payload of {len(payload)} bytes is too large"
    try:
        doc = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        return "payload is not UTF-8"
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays
        return f"payload is not JSON ({str(exc)[:60]})"
    if not isinstance(doc, dict):
        return f"payload is JSON {type(doc).__name__}, not an object"
    if _too_deep(payload, doc):
        return f"payload nests deeper than {MAX_DEPTH} levels (no contract document does)"
    return doc


def _too_deep(payload: bytes, doc: dict[str, Any]) -> bool:
    """Whether ``doc`` nests deeper than :data:`MAX_DEPTH`; a loop, so any depth ``json.loads`` took is safe.

    Printing, copying or comparing such a document recurses in Python; it is
    refused here, once, as the agent refuses a deep command.  Fewer brackets
    than the limit cannot nest deeper: the common case costs two ``count``s.
    ``type() is`` rather than ``isinstance``: ``json.loads`` makes plain dicts
    and lists, and this runs for every status of the fleet.
    """
    if payload.count(b"{") + payload.count(b"[") <= MAX_DEPTH:
        return False
    level: list[Any] = [doc]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


def parse_ts(value: object) -> float | None:
    """A contract ``ts`` as epoch seconds; ``None`` when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t.timestamp() if t.tzinfo is not None else None


def text_or(value: object, default: str) -> str:
    return value if isinstance(value, str) and value else default


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def span(seconds: float) -> str:
    """A duration for people, rounded down: ``46 ms``, ``4.2 s``, ``91 s``, ``12 min``, ``3 h``, ``2 d``."""
    s = abs(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{int(s)} s"
    if s < 7200:
        return f"{int(s // 60)} min"
    if s < 172_800:
        return f"{int(s // 3600)} h"
    return f"{int(s // 86400)} d"


def delay_text(seconds: float | None) -> str:
    """Arrival minus ``ts``, signed: negative when the device's clock runs ahead."""
    if seconds is None:
        return "?"
    return ("+" if seconds >= 0 else "-") + span(seconds)


def ago(seconds: float) -> str:
    s = max(0.0, seconds)
    return f"{int(s)} s ago" if s < 10 else f"{span(s)} ago"
