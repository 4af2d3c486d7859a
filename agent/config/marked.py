"""YAML with line numbers: the config file composed into values that remember where they were written.

PyYAML's plain ``safe_load`` forgets where a value came from, and a technician
standing at a gate needs ``gate.yaml:14: inputs[0].pin: ...`` to fix a typo.  So
the document is composed into nodes and turned into :class:`MarkedMap` /
:class:`MarkedList` values that remember the line of every key and item.  Kept
apart from the reading of those values (agent/config/reader.py) because this is
where a hostile or broken file is met: an alias bomb, a value PyYAML cannot
build, a number YAML 1.1 reads otherwise than written each become a problem on
a line, never a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
import yaml.reader

from agent.errors import printable


class _Unreadable:
    """A value already reported as unreadable: read as absent, without a second "missing" problem."""

    def __repr__(self) -> str:
        return "<unreadable>"


UNREADABLE: Any = _Unreadable()


class Invalid(Exception):  # noqa: N818 - reads as "raise Invalid(...)" like esphome
    """A single value failed validation; the message is shown to a person."""


class MarkedMap(dict[str, Any]):
    """A mapping that remembers its own line and the line of each key."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}

    def __repr__(self) -> str:
        # Never the contents: aliases share nodes, so text of a small file can grow exponentially.
        return f"<a mapping of {len(self)} keys, line {self.line}>"

    __str__ = __repr__


class MarkedList(list[Any]):
    """A sequence that remembers its own line and the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []

    def __repr__(self) -> str:
        return f"<a list of {len(self)} items, line {self.line}>"  # bounded: see MarkedMap

    __str__ = __repr__


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


_INT_TAG = "tag:yaml.org,2002:int"
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
MAX_NODES = 20_000  # a technician's config has a few hundred; more is an alias bomb or the wrong file
_CONSTRUCT_ERRORS = (yaml.YAMLError, ValueError, TypeError, OverflowError, AttributeError)


class _Composer:
    """Turns composed YAML nodes into marked values, one node at a time.

    Each node is built once (aliases share the result), the total is capped at
    :data:`MAX_NODES`, and a value PyYAML cannot build (``!!int abc``,
    ``2026-02-30``, unknown tags) becomes a problem on its line, not a traceback.
    """

    def __init__(self, errors: list[tuple[int, str, str]]) -> None:
        self.errors = errors
        self.constructor = yaml.SafeLoader("")
        self.built: dict[int, Any] = {}
        self.count = 0

    def value(self, node: yaml.Node, path: str) -> Any:
        if id(node) in self.built:
            return self.built[id(node)]
        self.count += 1
        if self.count > MAX_NODES:
            raise Invalid(f"more than {MAX_NODES} values (nested aliases?); this is not an agent config")
        if isinstance(node, yaml.MappingNode):
            out: Any = self._mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            out = MarkedList(_line(node))
            self.built[id(node)] = out
            for i, item in enumerate(node.value):
                out.append(self.value(item, f"{path}[{i}]"))
                out.item_lines.append(_line(item))
        else:
            out = self._scalar(node, path)
        self.built[id(node)] = out
        return out

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except _CONSTRUCT_ERRORS as exc:
            why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            message = f"cannot read this value ({why}); quote it if it is meant as text"
            self.errors.append((_line(node), path or "(top level)", message))
            return UNREADABLE
        text = node.value if isinstance(node.value, str) else ""
        if node.tag == _INT_TAG and getattr(node, "style", None) is None and not _DECIMAL.fullmatch(text):
            # YAML 1.1 reads 017 as octal (15), 0x11 as hex, 1:30 as base 60: "pin: 017" armed GPIO15.
            digits = text.lstrip("+-0") or "0"
            hint = f"write {digits} without the leading 0" if digits.isdigit() else "write it in decimal"
            message = (
                f"YAML reads {text} as the number {value}, not as written; {hint} (or quote it if it is meant as text)"
            )
            self.errors.append((_line(node), path or "(top level)", message))
            return UNREADABLE
        return value

    def _mapping(self, node: yaml.MappingNode, path: str) -> MarkedMap:
        """A mapping; keys merged in with ``<<`` give way to the keys written beside them, as YAML says."""
        out = MarkedMap(_line(node))
        self.built[id(node)] = out
        written = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        try:
            self.constructor.flatten_mapping(node)
        except _CONSTRUCT_ERRORS as exc:
            why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.errors.append((_line(node), path or "(top level)", f"cannot merge keys here ({why})"))
            return out
        merged = len(node.value) - written  # flatten_mapping puts the merged pairs first
        from_merge: set[str] = set()
        for n, (key_node, value_node) in enumerate(node.value):
            key = self._scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.errors.append((_line(key_node), path or "(top level)", "keys must be words"))
                continue
            sub = f"{path}.{key}" if path else key
            if key in out and key not in from_merge:
                self.errors.append(
                    (_line(key_node), sub, f"duplicate key (first given on line {out.key_lines[key]})"),
                )
                continue
            from_merge.discard(key)
            if n < merged:
                from_merge.add(key)
            out[key] = self.value(value_node, sub)
            out.key_lines[key] = _line(key_node)
        return out


def load_marked(path: Path) -> tuple[Any, list[tuple[int, str, str]]]:
    """Parse ``path`` into marked values; return them with structural problems.

    Raises:
        Invalid: the file cannot be read or is not YAML at all.

    """
    where = printable(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Invalid(f"{where}: file not found; pass the right path with -c FILE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid(f"{where}: cannot read: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        errors: list[tuple[int, str, str]] = []
        if node is None:
            return MarkedMap(1), errors
        return _Composer(errors).value(node, ""), errors
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        raise Invalid(f"{at}: not valid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(0, exc.position)) + 1
        raise Invalid(f"{where}:{line}: not valid YAML: {exc.reason} (character {exc.character!r})") from None
    except yaml.YAMLError as exc:
        raise Invalid(f"{where}: not valid YAML: {printable(str(exc).splitlines()[0])}") from None
    except RecursionError:
        raise Invalid(f"{where}: not valid as a config: nested too deeply") from None
