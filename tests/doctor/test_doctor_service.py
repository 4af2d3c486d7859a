"""doctor and the service: a crash-looping unit, an agent that is not running, a socket it may not use, and
what docs/install.md tells the technician about them."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from agent.config import load_config
from agent.doctor.checks import Level, check_systemd
from agent.doctor.runner import AgentProbe, Host, _agent, run_doctor
from tests.doctor.test_doctor import write_cfg
from tests.support.broker import Broker

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "campus-agent.service"
INSTALL = ROOT / "docs" / "install.md"


def fake_systemd(tmp_path: Path, active: str, enabled: str = "enabled") -> tuple[str, Path]:
    """A stand-in systemctl answering is-active / is-enabled, and a /proc/1/comm saying systemd."""
    comm = tmp_path / "comm"
    comm.write_text("systemd\n")
    script = tmp_path / "systemctl"
    script.write_text(f'#!/bin/sh\ncase "$1" in\n  is-active) echo {active};;\n  is-enabled) echo {enabled};;\nesac\n')
    script.chmod(0o755)
    return str(script), comm


def test_check_systemd__activating_without_an_agent_is_a_crash_loop(tmp_path: Path) -> None:
    """StartLimitIntervalSec=0 restarts an agent that exits at every start forever: `is-active` says
    "activating" (auto-restart), never "failed". doctor said WARN "start it: systemctl enable --now"."""
    c = check_systemd(*fake_systemd(tmp_path, "activating"))
    assert c.level is Level.FAIL, c.line()
    assert "journalctl -u campus-agent -n 50" in c.todo
    assert "enable --now" not in c.todo


def test_check_systemd__activating_with_an_agent_answering_is_a_start(tmp_path: Path) -> None:
    c = check_systemd(*fake_systemd(tmp_path, "activating"), agent_listens=True)
    assert c.level is Level.WARN, c.line()
    assert "enable --now" not in c.todo


@pytest.mark.broker
def test_doctor__a_crash_looping_service_fails_the_run_and_says_the_agent_is_not_running(
    tmp_path: Path, broker: Broker
) -> None:
    systemctl, comm = fake_systemd(tmp_path, "activating")
    cfg = write_cfg(tmp_path / "agent", broker.port)
    out = io.StringIO()
    rc = run_doctor(
        cfg, timeout_s=2.0, out=out, host=Host(clock_synced=lambda: True, systemctl=systemctl, pid1_comm=comm)
    )
    report = out.getvalue()
    assert rc == 1, report
    socket = load_config(cfg).control.socket
    assert f"OK    agent not running (nothing on {socket})" in report
    [fail] = [ln for ln in report.splitlines() if ln.startswith("FAIL")]
    assert fail.startswith("FAIL  service campus-agent: activating, enabled"), report
    assert "journalctl -u campus-agent -n 50" in fail


def test_agent__no_permission_names_the_control_group(tmp_path: Path) -> None:
    """systemd/campus-agent.sysusers and docs/install.md: technicians go in campus-agent-ctl, and
    "Never add people to the campus-agent group" (it is the service user's own)."""
    cfg = load_config(write_cfg(tmp_path, 1883))
    [c] = _agent(cfg, AgentProbe(problem="no permission", denied=True))
    assert c.level is Level.WARN
    assert "usermod -aG campus-agent-ctl" in c.todo
    assert "campus-agent group" not in c.todo


# ---- docs/install.md against the unit and doctor -----------------------------------------


def shell_lines(markdown: str) -> list[str]:
    """The lines of the ```sh blocks."""
    return [ln.strip() for block in re.findall(r"```sh\n(.*?)```", markdown, re.DOTALL) for ln in block.splitlines()]


def test_install_doc__doctor_is_run_with_sudo() -> None:
    """Doctor reads the secrets (owner-only files), as the same page says; §4 ran it without sudo."""
    runs = [ln for ln in shell_lines(INSTALL.read_text()) if "campus-agent doctor" in ln]
    assert runs
    assert all(ln.startswith("sudo campus-agent doctor") for ln in runs), runs


def test_install_doc__restart_limit_is_the_units() -> None:
    """The unit never stops restarting (StartLimitIntervalSec=0); the page said "at most 10 starts in 5 minutes"."""
    assert re.search(r"^StartLimitIntervalSec=0$", UNIT.read_text(), re.MULTILINE)
    doc = " ".join(INSTALL.read_text().split())
    assert not re.search(r"at most \d+ (re)?starts", doc)
    assert "activating (auto-restart)" in doc
