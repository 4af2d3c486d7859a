"""Inputs.close() is bounded when the inputs thread is stuck in a commit, and still makes its last poll otherwise.

Before, close() joined the thread for 15 s (systemd's whole ``TimeoutStopSec``)
and its last poll then waited for the poll lock without bound, so systemd
killed the agent before the recorder, the state file and the outbox were closed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import agent.inputs as inputs_mod
from agent.config.model import Contact, InputConfig, InputKind
from agent.inputs import Inputs
from tests.support.clocks import synced_clock
from tests.support.waiting import eventually

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "campus-agent.service"


def _cfg(name: str, pin: int) -> InputConfig:
    return InputConfig(name, InputKind.PANIC_BUTTON, pin, Contact.NORMALLY_OPEN, 0, 0.0, False)


class _StuckCommit:
    """An emit whose commit blocks until released, as on a dying SD card; records what it was given."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.kinds: list[tuple[str, str]] = []

    def __call__(self, batch: list[Any]) -> None:
        self.entered.set()
        self.release.wait(10)
        self.kinds.extend((k.value, n) for k, n, *_ in batch)


def _close_in_thread(inputs: Inputs) -> tuple[threading.Thread, list[float]]:
    took: list[float] = []

    def close() -> None:
        t0 = time.monotonic()
        inputs.close()
        took.append(time.monotonic() - t0)

    closer = threading.Thread(target=close, name="closer", daemon=True)
    closer.start()
    return closer, took


def test_inputs_close__join_bound_is_well_under_systemd_stop_timeout() -> None:
    found = re.search(r"^TimeoutStopSec=(\d+)s$", UNIT.read_text(), re.MULTILINE)
    assert found is not None, f"{UNIT} sets no TimeoutStopSec"
    stop_s = float(found.group(1))
    assert stop_s / 3 >= inputs_mod._CLOSE_JOIN_S, "the recorder, state file and outbox need the rest of the stop"


def test_inputs_close__bounded_and_names_what_is_stuck_when_a_commit_hangs(
    mock_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(inputs_mod, "_CLOSE_JOIN_S", 0.3)
    emit = _StuckCommit()
    inputs = Inputs((_cfg("gate", 17), _cfg("desk", 18)), pin_factory=mock_factory, clock=synced_clock(), emit=emit)
    inputs.arm()
    try:
        mock_factory.pin(17).drive_low()
        assert emit.entered.wait(5), "the press never reached the emit"
        mock_factory.pin(18).drive_low()  # queued behind the stuck commit
        with caplog.at_level(logging.ERROR, logger="agent.inputs"):
            closer, took = _close_in_thread(inputs)
            closer.join(3.0)
            assert not closer.is_alive(), "close() is still blocked behind the stuck commit"
        assert took[0] < 2.0, f"close() took {took[0]:.1f} s, past its {inputs_mod._CLOSE_JOIN_S} s bound"
        text = caplog.text
        assert "the last poll at stop is skipped" in text
        assert "its commit of 1 events (panic from gate)" in text
        assert "still queued (inputs: desk)" in text
    finally:
        emit.release.set()
    thread = inputs._thread
    assert thread is not None
    eventually(lambda: not thread.is_alive(), 5, "the inputs thread to end once its commit returns")
    assert emit.kinds == [("panic", "gate"), ("panic", "desk")], "the stuck press, then the one queued behind it"


def test_inputs_close__a_commit_that_returns_within_the_bound_still_gets_the_last_poll(
    mock_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs_mod, "_CLOSE_JOIN_S", 5.0)
    emit = _StuckCommit()
    inputs = Inputs((_cfg("gate", 17), _cfg("desk", 18)), pin_factory=mock_factory, clock=synced_clock(), emit=emit)
    inputs.arm()
    try:
        mock_factory.pin(17).drive_low()
        assert emit.entered.wait(5), "the press never reached the emit"
        mock_factory.pin(18).drive_low()  # queued behind the slow commit
        closer, _ = _close_in_thread(inputs)
        eventually(lambda: inputs.closed, 2, "close() to begin")
    finally:
        emit.release.set()
    closer.join(5.0)
    assert not closer.is_alive()
    assert emit.kinds == [("panic", "gate"), ("panic", "desk")], (
        "the press queued behind the commit is recorded at stop"
    )


def test_inputs_close__a_press_queued_behind_a_commit_that_returns_after_the_bound_is_recorded(
    mock_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() skipped its last poll; the inputs thread, once its commit returns, polls once more on its way out."""
    monkeypatch.setattr(inputs_mod, "_CLOSE_JOIN_S", 0.3)
    entered, release = threading.Event(), threading.Event()
    kinds: list[tuple[str, str]] = []

    def slow_commit(batch: list[Any]) -> None:
        entered.set()
        release.wait(10)
        kinds.extend((k.value, n) for k, n, *_ in batch)

    two = (
        InputConfig("gate", InputKind.PANIC_BUTTON, 17, Contact.NORMALLY_OPEN, 0, 0.0, False),
        InputConfig("desk", InputKind.PANIC_BUTTON, 18, Contact.NORMALLY_OPEN, 0, 0.0, False),
    )
    inputs = Inputs(two, pin_factory=mock_factory, clock=synced_clock(), emit=slow_commit)
    inputs.arm()
    mock_factory.pin(17).drive_low()
    assert entered.wait(5)
    mock_factory.pin(18).drive_low()  # a second panic, queued behind the slow commit
    closer = threading.Thread(target=inputs.close, daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()
    release.set()
    thread = inputs._thread
    assert thread is not None
    eventually(lambda: not thread.is_alive(), 5, "the inputs thread to end")
    assert ("panic", "desk") in kinds, f"the queued panic was never recorded: {kinds}"
