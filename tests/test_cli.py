"""The technician's commands against a running agent process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.cli import main
from tests.support.agentproc import ROOT, write_config
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )


def test_status__text_and_json(broker, agent_proc, device):
    agent = agent_proc(broker.port, device=device)
    eventually(lambda: agent.status()["link"]["connected"], what="the agent to connect")
    agent.click()
    agent.wait_recorded(1)
    r = cli("status", "-c", str(agent.config))
    assert r.returncode == 0, r.stderr
    assert f"device   main/{device}" in r.stdout
    assert f"link     connected to 127.0.0.1:{broker.port}" in r.stdout
    assert "input    panic" in r.stdout
    assert "panic" in r.stdout.split("event    ", 1)[1]
    r = cli("status", "-c", str(agent.config), "--json")
    doc = json.loads(r.stdout)
    assert doc["status"]["device"] == device
    assert doc["link"]["connected"] is True
    assert doc["recent_events"][0]["type"] == "panic"


def test_simulate__press_via_cli_reaches_central(broker, central, agent_proc, device):
    agent = agent_proc(broker.port, device=device)
    assert cli("simulate", "press", "panic", "-c", str(agent.config)).returncode == 0
    assert cli("simulate", "release", "panic", "-c", str(agent.config)).returncode == 0
    central.wait_for(lambda m: m.topic.endswith("/event/panic"))


def test_simulate__unknown_input_is_refused(broker, agent_proc, device):
    agent = agent_proc(broker.port, device=device)
    r = cli("simulate", "press", "desk", "-c", str(agent.config))
    assert r.returncode == 1
    assert "no input named 'desk'; configured: panic" in r.stderr


def test_test_mode__presses_carry_test_true(broker, central, agent_proc, device, validate):
    agent = agent_proc(broker.port, device=device)
    r = cli("test-mode", "on", "--minutes", "5", "-c", str(agent.config))
    assert r.returncode == 0, r.stderr
    assert "test mode on until" in r.stdout
    agent.click()
    doc = central.wait_for(lambda m: m.topic.endswith("/event/panic")).doc
    validate("event", doc)
    assert doc["test"] is True
    st = agent.status()["status"]
    assert st["test_mode_until"] is not None
    assert st["inputs"]["panic"]["last_test"] == doc["ts"]
    assert cli("test-mode", "off", "-c", str(agent.config)).returncode == 0
    agent.click()
    later = central.wait_for(lambda m: m.topic.endswith("/event/panic")).doc
    assert later["test"] is False


def test_status__no_agent_running_says_so(tmp_path):
    cfg = write_config(tmp_path, 1883, device="idle-1")
    r = cli("status", "-c", str(cfg))
    assert r.returncode == 1
    assert "no agent is listening on" in r.stderr
    assert "is it running?" in r.stderr


def test_run__missing_gpio_backend_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path, 1883, device="pi-1", gpio={"pin_factory": "lgpio"})
    r = cli("run", "-c", str(cfg))
    if r.returncode == 0:
        pytest.skip("this machine has a working lgpio backend")
    assert r.returncode == 1
    assert "gpio.pin_factory: lgpio cannot be used on this machine" in r.stderr
    assert "Traceback" not in r.stderr


def test_run__second_agent_on_same_socket_refused(broker, agent_proc, device, tmp_path):
    agent = agent_proc(broker.port, device=device)
    r = cli("run", "-c", str(agent.config))
    assert r.returncode == 1
    assert "another agent is already running on control socket" in r.stderr


def test_ready__sent_with_broker_down(tmp_path):
    """systemd hears READY=1 once inputs are armed, even when no broker answers."""
    from tests.support.broker import free_port

    d = tempfile.mkdtemp(prefix="ntf-", dir="/tmp")
    path = os.path.join(d, "n.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(20)
    cfg = write_config(tmp_path, free_port(), device="offline-1")
    p = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(cfg)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=path),
        stderr=subprocess.DEVNULL,
    )
    try:
        msg = s.recv(4096).decode()
        assert "READY=1" in msg.splitlines()
        assert "inputs armed" in msg
    finally:
        p.terminate()
        p.wait(15)
        s.close()
        Path(path).unlink()
        os.rmdir(d)


def test_main__version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "campus-agent 0.1.0" in capsys.readouterr().out
