"""A control request carries its client's deadline: one given up on is never carried out later.

``campus-agent test-mode on`` used to print "cannot talk to the agent ...: timed out" (exit 1) while
its request waited in the socket, and the agent switched test mode on afterwards for 30 minutes:
real presses then went out as tests while the technician believed test mode was off.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import cli
from agent.control import START_MARGIN_S, ControlServer, _start_by, read_only
from agent.control_client import DEADLINE_FIELD, request
from agent.errors import ControlError
from tests.support.agentproc import short_socket_path


class _Agent:
    """The handlers a real agent registers, reduced to what they change."""

    def __init__(self) -> None:
        self.test_mode_minutes: list[float] = []
        self.busy = threading.Event()  # set while a simulated press is being carried out
        self.release = threading.Event()

    def handlers(self) -> dict[str, Any]:
        return {
            "status": read_only(lambda _req: {"state": "fine"}),
            "simulate": self._simulate,
            "test_mode": self._test_mode,
        }

    def _simulate(self, _req: dict[str, Any]) -> dict[str, Any]:
        self.busy.set()
        self.release.wait(10)  # a change that takes its time (an SD card's fsync)
        return {"input": "b1", "action": "press"}

    def _test_mode(self, req: dict[str, Any]) -> dict[str, Any]:
        self.test_mode_minutes.append(float(req["minutes"]))
        return {"test_mode_until": "2026-12-01T06:00:00Z" if req["minutes"] else None}


@pytest.fixture
def agent() -> Iterator[tuple[_Agent, ControlServer]]:
    fake = _Agent()
    srv = ControlServer(short_socket_path(), fake.handlers())
    srv.start()
    yield fake, srv
    fake.release.set()
    srv.close()


def _raw(path: Path, req: dict[str, Any]) -> dict[str, Any]:
    """One request as an older or foreign client sends it: exactly these fields."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
        return reply


def _cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: Path, *argv: str) -> tuple[int, str]:
    """Run ``campus-agent`` with the control timeout cut to 0.6 s (5 s in use), as a technician would."""
    monkeypatch.setattr(cli, "request", functools.partial(request, timeout=0.6))
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"control:\n  socket: {path}\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main([*argv, "-c", str(cfg)])
    return rc, err.getvalue()


def test_control_deadline__a_request_past_its_deadline_changes_nothing(agent: tuple[_Agent, ControlServer]) -> None:
    fake, srv = agent
    reply = _raw(srv.path, {"cmd": "test_mode", "minutes": 30, DEADLINE_FIELD: time.monotonic() - 1})
    assert reply["ok"] is False
    assert "not carried out, nothing changed" in reply["error"]
    assert fake.test_mode_minutes == []


def test_control_deadline__a_change_queued_behind_a_slow_one_is_refused_not_done_later(
    agent: tuple[_Agent, ControlServer], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake, srv = agent
    press = threading.Thread(target=_raw, args=(srv.path, {"cmd": "simulate", "input": "b1", "action": "press"}))
    press.start()
    try:
        assert fake.busy.wait(5), "the slow change never started"
        rc, err = _cli(monkeypatch, tmp_path, srv.path, "test-mode", "on")
    finally:
        fake.release.set()
        press.join(10)
    assert rc == cli.EXIT_FAIL
    assert request(srv.path, "status") == {"ok": True, "state": "fine"}  # served after anything still queued
    assert fake.test_mode_minutes == [], f"the CLI said {err.strip()!r}, and test mode was switched on all the same"
    assert "request 'test_mode' not carried out, nothing changed" in err


def test_control_deadline__a_change_that_got_no_answer_says_how_to_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A listener that never answers: the request went out, so the CLI cannot know whether it was done."""
    path = short_socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(4)
        rc, err = _cli(monkeypatch, tmp_path, path, "test-mode", "on")
        assert rc == cli.EXIT_FAIL
        assert "timed out; the request went out and may have been carried out all the same" in err
        assert "check with `campus-agent status`" in err
        assert "`campus-agent test-mode off`" in err
        rc, err = _cli(monkeypatch, tmp_path, path, "status")
        assert rc == cli.EXIT_FAIL
        assert "timed out" in err
        assert "may have been carried out" not in err  # status changes nothing


def test_control_deadline__a_client_without_a_deadline_keeps_working(agent: tuple[_Agent, ControlServer]) -> None:
    fake, srv = agent
    assert _raw(srv.path, {"cmd": "test_mode", "minutes": 5}) == {
        "ok": True,
        "test_mode_until": "2026-12-01T06:00:00Z",
    }
    assert fake.test_mode_minutes == [5.0]


@pytest.mark.parametrize("deadline", ["soon", True, float("nan"), 10**400], ids=["text", "bool", "nan", "past-a-float"])
def test_control_deadline__a_deadline_that_is_not_a_number_is_refused(
    agent: tuple[_Agent, ControlServer], deadline: object
) -> None:
    fake, srv = agent
    reply = _raw(srv.path, {"cmd": "test_mode", "minutes": 5, DEADLINE_FIELD: deadline})
    assert reply == {"ok": False, "error": "'deadline_mono' must be a number: seconds on the monotonic clock"}
    assert fake.test_mode_minutes == []


def test_control_deadline__too_little_time_to_answer_is_refused_at_once(agent: tuple[_Agent, ControlServer]) -> None:
    """A change is started only while its reply can still reach the client (START_MARGIN_S before its deadline)."""
    fake, srv = agent
    with pytest.raises(ControlError, match="request 'test_mode' not carried out, nothing changed"):
        request(srv.path, "test_mode", timeout=START_MARGIN_S / 2, minutes=5)
    assert fake.test_mode_minutes == []


def test_control_deadline__a_status_asked_with_a_short_timeout_is_answered(
    agent: tuple[_Agent, ControlServer],
) -> None:
    """A late status changes nothing: only changes keep the margin (doctor --timeout 0.2 called a live agent dead)."""
    _fake, srv = agent
    assert request(srv.path, "status", timeout=START_MARGIN_S / 2) == {"ok": True, "state": "fine"}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(client=_JSON | st.integers(min_value=-(10**400), max_value=10**400), own=st.floats(0, 1e9))
def test_control_deadline__any_json_deadline_gives_a_start_time_or_a_refusal(client: object, own: float) -> None:
    """Whatever a client puts in ``deadline_mono``: a time no later than the server's own, or None; never a raise."""
    for margin in (0.0, START_MARGIN_S):
        start_by = _start_by(client, own, margin_s=margin)
        assert start_by is None or (isinstance(start_by, float) and start_by <= own)
        if start_by is None:
            assert client is not None
