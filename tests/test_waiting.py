"""The waiting helper itself: it returns the value, fails with the message, and retries named errors."""

from __future__ import annotations

import itertools

import pytest

from tests.support.waiting import eventually, never


def test_eventually__returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert eventually(lambda: next(counter) >= 3 and "done", timeout=5.0) == "done"


def test_eventually__fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.1 s waiting for the broker"):
        eventually(lambda: None, timeout=0.1, what=lambda: "the broker")


def test_eventually__retries_the_named_errors_and_chains_the_last() -> None:
    calls = itertools.count()

    def flaky() -> bool:
        if next(calls) < 2:
            raise ConnectionRefusedError
        return True

    assert eventually(flaky, timeout=5.0, retry_on=(ConnectionRefusedError,)) is True
    with pytest.raises(AssertionError) as failed:
        eventually(_refuse, timeout=0.1, retry_on=(ConnectionRefusedError,))
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)


def test_eventually__does_not_swallow_other_errors() -> None:
    with pytest.raises(ZeroDivisionError):
        eventually(lambda: 1 // 0, timeout=5.0)


def test_never__fails_when_the_thing_happens() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError, match="replay happened"):
        never(lambda: next(counter) >= 2, within=5.0, what="replay")
    never(lambda: False, within=0.05)


def _refuse() -> bool:
    raise ConnectionRefusedError
