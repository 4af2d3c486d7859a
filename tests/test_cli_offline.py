"""The technician's commands with no agent running and no broker: clear errors, READY=1, --version."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.cli import main
from tests.support.agentproc import ROOT, run_cli, write_config
from tests.support.broker import free_port


def test_status__no_agent_running_says_so(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1883, device="idle-1")
    r = run_cli("status", "-c", str(cfg))
    assert r.returncode == 1
    assert "no agent is listening on" in r.stderr
    assert "is it running?" in r.stderr


def test_run__missing_gpio_backend_is_a_clear_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1883, device="pi-1", gpio={"pin_factory": "lgpio"})
    r = run_cli("run", "-c", str(cfg))
    if r.returncode == 0:
        pytest.skip("this machine has a working lgpio backend")
    assert r.returncode == 1
    assert "gpio.pin_factory: lgpio cannot be used on this machine" in r.stderr
    assert "Traceback" not in r.stderr


def test_ready__sent_with_broker_down(tmp_path: Path) -> None:
    """systemd hears READY=1 once inputs are armed, even when no broker answers."""
    d = tempfile.mkdtemp(prefix="ntf-", dir="/tmp")
    path = os.path.join(d, "n.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(20)
    cfg = write_config(tmp_path, free_port(), device="offline-1")
    log = tmp_path / "agent.log"
    with open(log, "wb") as logf:  # kept: a stop that hangs is shown with its log and every thread's stack
        p = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(cfg)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=path, PYTHONFAULTHANDLER="1"),
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    try:
        msg = s.recv(4096).decode()
        assert "READY=1" in msg.splitlines()
        assert "inputs armed" in msg
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            p.wait(10)
            pytest.fail(f"the agent did not stop within 15 s of SIGTERM; its log:\n{log.read_text()}")
        finally:
            s.close()
            Path(path).unlink()
            os.rmdir(d)


def test_main__version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "campus-agent 0.1.0" in capsys.readouterr().out


@pytest.mark.parametrize(("minutes", "said"), [("999", "expected 1-240 minutes, got 999"), ("x", "whole number")])
def test_test_mode__minutes_out_of_range_is_a_usage_error(tmp_path: Path, minutes: str, said: str) -> None:
    cfg = write_config(tmp_path, 1883, device="minutes-1")
    r = run_cli("test-mode", "on", "--minutes", minutes, "-c", str(cfg))
    assert r.returncode == 2
    assert said in r.stderr
    assert "Traceback" not in r.stderr
