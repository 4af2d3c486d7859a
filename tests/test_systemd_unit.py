"""The systemd unit: verifies cleanly and keeps its exposure at or below 1.5 ("OK")."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "campus-agent.service"
pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def _unit_with_stub(tmp_path: Path) -> Path:
    # verify insists that ExecStart exists and is executable: point it at a stub, keep the unit's name
    stub = tmp_path / "campus-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={stub}", UNIT.read_text(), flags=re.MULTILINE))
    return unit


def test_unit__verifies_without_any_warning(tmp_path: Path) -> None:
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(_unit_with_stub(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    # unknown keys and bad values are only warnings with exit 0: fail on any output
    assert r.returncode == 0, r.stdout + r.stderr
    assert not r.stdout.strip(), r.stdout
    assert not r.stderr.strip(), r.stderr


def test_unit__exposure_at_most_1_5(tmp_path: Path) -> None:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=15", str(_unit_with_stub(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    print("exposure", m.group(1))
    assert float(m.group(1)) <= 1.5
    assert r.returncode == 0


def test_unit__notify_watchdog_and_restart_policy() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "SupplementaryGroups=gpio video",
        "StateDirectory=campus-agent",
        "RuntimeDirectory=campus-agent",
        "ConfigurationDirectory=campus-agent",
        "StartLimitIntervalSec=0",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line


def test_sysusers__dry_run(tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers not installed")
    r = subprocess.run(
        ["systemd-sysusers", "--dry-run", f"--root={tmp_path}", str(ROOT / "systemd" / "campus-agent.sysusers")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr


def test_unit__least_privilege_lines() -> None:
    """Issue 14.5/14.9: control group as primary group, no listening, bounded memory and tasks, ProtectClock kept."""
    text = UNIT.read_text()
    for line in (
        "User=campus-agent",
        "Group=campus-agent-ctl",
        "UMask=0077",
        "SocketBindDeny=any",
        "MemoryMax=384M",
        "TasksMax=64",
        "ProtectClock=yes",
        "CapabilityBoundingSet=",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    assert not re.search(r"^StartLimitBurst=", text, re.MULTILINE)


def test_sysusers__control_group_is_not_the_secrets_owner() -> None:
    text = (ROOT / "systemd" / "campus-agent.sysusers").read_text()
    assert re.search(r"^g campus-agent-ctl -$", text, re.MULTILINE)
    assert "m campus-agent campus-agent-ctl" not in text  # the unit sets Group=; the group is for people
