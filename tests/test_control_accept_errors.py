"""The control socket when accept() keeps failing (EMFILE at the descriptor limit, ENOMEM, ENOBUFS).

It used to retry at once, forever and silently: the ``control`` thread spun at
100 % CPU on a 2-core Pi beside the inputs and the sender.  The failure is
injected deterministically: a listening socket whose accept() always fails.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from agent import control
from agent.control import ControlServer


class _FailingAccept:
    """A listening socket whose accept() fails with ``code``, recording when it was called."""

    def __init__(self, real: socket.socket, code: int, *, calls_wanted: int) -> None:
        self.real, self.code = real, code
        self.calls: list[float] = []
        self.enough = threading.Event()
        self._wanted = calls_wanted

    def accept(self) -> tuple[socket.socket, object]:
        self.calls.append(time.monotonic())
        if len(self.calls) >= self._wanted:
            self.enough.set()
        raise OSError(self.code, os.strerror(self.code))

    def shutdown(self, how: int) -> None:
        self.real.shutdown(how)

    def close(self) -> None:
        self.real.close()


def _serve_failing(tmp_path: Path, code: int, *, calls_wanted: int) -> tuple[ControlServer, _FailingAccept]:
    srv = ControlServer(tmp_path / "c.sock", {"status": lambda _r: {}})
    fake = _FailingAccept(socket.socket(socket.AF_UNIX), code, calls_wanted=calls_wanted)
    srv._sock = fake  # type: ignore[assignment]
    srv._thread = threading.Thread(target=srv._serve, name="control", daemon=True)
    srv._thread.start()
    return srv, fake


def test_control__failing_accept_pauses_before_retrying(tmp_path: Path) -> None:
    srv, fake = _serve_failing(tmp_path, errno.EMFILE, calls_wanted=2)
    try:
        assert fake.enough.wait(5), "accept() was not retried"
        gap = fake.calls[1] - fake.calls[0]
        assert gap >= 0.8 * control.ACCEPT_RETRY_S, f"accept() retried after {gap * 1000:.1f} ms: the thread spins"
    finally:
        srv.close()


def test_control__failing_accept_is_logged_once_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(control, "ACCEPT_RETRY_S", 0.01)
    caplog.set_level(logging.WARNING, logger="agent.control")
    srv, fake = _serve_failing(tmp_path, errno.EMFILE, calls_wanted=5)
    try:
        assert fake.enough.wait(5)
    finally:
        srv.close()
    [record] = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert "Too many open files" in record.getMessage()
    assert "raise LimitNOFILE" in record.getMessage()


def test_control__close_is_prompt_while_accept_keeps_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "ACCEPT_RETRY_S", 30.0)  # the pause waits on the stop event, not a sleep
    srv, fake = _serve_failing(tmp_path, errno.ENOBUFS, calls_wanted=1)
    assert fake.enough.wait(5)
    t0 = time.monotonic()
    srv.close()
    assert time.monotonic() - t0 < 1.0
    assert srv._thread is not None
    assert not srv._thread.is_alive()
