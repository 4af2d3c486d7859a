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
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
MAX_NODES = 20_000  # a technician's config has a few hundred; more is an alias bomb or the wrong file
MAX_BYTES = 1 << 20  # the largest real config is a few KiB; a bigger file is a log or an image passed by mistake
MAX_DIGITS = 30  # no setting needs more; Python refuses to read over 4,300 with advice meant for programmers
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
            raise _TooMany(_line(node))
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
        text = node.value if isinstance(node.value, str) else ""
        if node.tag in (_INT_TAG, _FLOAT_TAG) and sum(c.isdigit() for c in text) > MAX_DIGITS:
            message = f"number too large ({sum(c.isdigit() for c in text)} digits); write the value this key expects"
            self.errors.append((_line(node), path or "(top level)", message))
            return UNREADABLE
        try:
            value = self.constructor.construct_object(node, deep=True)
        except _CONSTRUCT_ERRORS as exc:
            why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            message = f"cannot read this value ({why}); quote it if it is meant as text"
            self.errors.append((_line(node), path or "(top level)", message))
            return UNREADABLE
        if _not_as_written(node, text):
            # YAML 1.1 reads 017 as octal (15), 0x11 as hex, 1:30 as base 60: "pin: 017" armed GPIO15.
            bare = text.lstrip("+-0") or "0"
            hint = f"write {bare} without the leading 0" if bare.isdigit() else "write it in decimal"
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
                self.errors.append((_line(key_node), path or "(top level)", _not_a_word(key_node, key)))
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


def _not_as_written(node: yaml.Node, text: str) -> bool:
    """A plain number YAML 1.1 reads otherwise than a person does: 017, 0x11, 1:30, 1:30.0."""
    if getattr(node, "style", None) is not None:
        return False
    if node.tag == _INT_TAG:
        return not _DECIMAL.fullmatch(text)
    return node.tag == _FLOAT_TAG and ":" in text


def _not_a_word(node: yaml.Node, key: Any) -> str:
    """Why a key is refused: ``on:`` is a word to a person but ``true`` to YAML 1.1."""
    if isinstance(node, yaml.ScalarNode) and node.tag in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG) and key is not UNREADABLE:
        text = printable(str(node.value))
        return f"YAML reads the key {text} as {key!r}, not as a word; quote it: '{text}':"
    return "keys must be words; write a plain word before the ':'"


class _TooMany(Exception):  # noqa: N818 - internal signal, turned into Invalid with the file name
    """More nodes than any config has; carries the line where counting stopped."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _CountingLoader(yaml.SafeLoader):
    """A SafeLoader that stops composing after :data:`MAX_NODES` nodes, so a wrong file costs little."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooMany(int(self.peek_event().start_mark.line) + 1)  # type: ignore[no-untyped-call]
        return super().compose_node(parent, index)


def _read_text(path: Path, where: str) -> str:
    """The file as text, refused before parsing when far bigger than any config or not UTF-8."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        # check-config takes the file as its argument, every other command as -c/--config FILE (agent/cli.py).
        raise Invalid(
            f"{where}: file not found; give the right path (check-config FILE, the other commands --config FILE)"
        ) from None
    except OSError as exc:
        raise Invalid(f"{where}: cannot read: {printable(str(exc))}") from None
    if len(data) > MAX_BYTES:
        raise Invalid(
            f"{where}: larger than {MAX_BYTES // 1024} KiB, and an agent config is a few KiB; "
            "is this the right file (not a log or an image)?"
        )
    try:
        return data.decode("utf-8")  # a BOM Notepad adds is skipped by the YAML reader
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise Invalid(
            f"{where}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} in column {column}); "
            "save the file as UTF-8, or retype that character"
        ) from None


def _syntax_hint(problem: str) -> str:
    """The fix for the one syntax error people make most: an editor that indents with a tab."""
    return "; indent with spaces, not tabs" if "'\\t'" in problem or "tab character" in problem else ""


def load_marked(path: Path) -> tuple[Any, list[tuple[int, str, str]]]:
    """Parse ``path`` into marked values; return them with structural problems.

    Raises:
        Invalid: the file cannot be read, is far too big or is not YAML at all.

    """
    where = printable(str(path))
    text = _read_text(path, where)
    loader: _CountingLoader | None = None
    try:
        loader = _CountingLoader(text)  # reads the whole text at once: may raise ReaderError
        node = loader.get_single_node()
        errors: list[tuple[int, str, str]] = []
        if node is None:
            return MarkedMap(1), errors
        return _Composer(errors).value(node, ""), errors
    except _TooMany as exc:
        raise Invalid(
            f"{where}:{exc.line}: more than {MAX_NODES} values (nested aliases?), and an agent config has "
            "a few hundred; is this the right file?"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        raise Invalid(f"{at}: not valid YAML: {exc.problem}{_syntax_hint(str(exc.problem))}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(0, exc.position)) + 1
        raise Invalid(f"{where}:{line}: not valid YAML: {exc.reason} (character {exc.character!r})") from None
    except yaml.YAMLError as exc:
        raise Invalid(f"{where}: not valid YAML: {printable(str(exc).splitlines()[0])}") from None
    except RecursionError:
        raise Invalid(f"{where}: not valid as a config: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
