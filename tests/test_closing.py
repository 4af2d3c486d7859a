"""The resource-owner mixin: ``with`` closes, ``repr`` shows state or ``closed``, a missing close() fails early."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.closing import Closing, ClosingFile


class _Owner(Closing):
    def __init__(self, ident: str = "") -> None:
        self.ident = ident
        self.closes = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self.closes += 1
        self._closed = True

    def _repr_id(self) -> str:
        return self.ident

    def _repr_state(self) -> str:
        return "pending=2"


def test_closing__with_returns_the_owner_and_closes_it() -> None:
    owner = _Owner()
    with owner as got:
        assert got is owner
        assert not owner.closed
    assert (owner.closed, owner.closes) == (True, 1)


def test_closing__an_exception_inside_with_still_closes_and_is_not_swallowed() -> None:
    owner = _Owner()
    with pytest.raises(RuntimeError, match="^boom$"), owner:
        raise RuntimeError("boom")
    assert owner.closes == 1


@pytest.mark.parametrize(
    ("ident", "close", "expected"),
    [
        ("", False, "<_Owner pending=2>"),
        ("", True, "<_Owner closed>"),
        ("/var/lib/x.db", False, "<_Owner /var/lib/x.db pending=2>"),
        ("/var/lib/x.db", True, "<_Owner /var/lib/x.db closed>"),
    ],
)
def test_closing__repr(ident: str, close: bool, expected: str) -> None:
    owner = _Owner(ident)
    if close:
        owner.close()
    assert repr(owner) == expected


def test_closing__default_state_is_open() -> None:
    class Plain(_Owner):
        def _repr_state(self) -> str:
            return Closing._repr_state(self)

    assert repr(Plain()) == "<Plain open>"


def test_closing__an_owner_without_close_cannot_be_built() -> None:
    class NoClose(Closing):
        @property
        def closed(self) -> bool:
            return False

    with pytest.raises(TypeError, match="abstract method"):
        NoClose()  # type: ignore[abstract]


class _File(ClosingFile):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._closed = False

    def close(self) -> None:
        self._closed = True


def test_closing_file__repr_names_the_file_open_and_closed(tmp_path: Path) -> None:
    with _File(tmp_path / "outbox.db") as owner:
        assert repr(owner) == f"<_File {tmp_path / 'outbox.db'} open>"
    assert owner.closed
    assert repr(owner) == f"<_File {tmp_path / 'outbox.db'} closed>"
