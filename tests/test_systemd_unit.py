"""The systemd unit: verifies cleanly and keeps its exposure at or below 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "campus-agent.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed (apt-get install systemd)")


def _unit_with_stub(tmp_path: Path) -> Path:
    # verify insists that ExecStart exists and is executable: point it at a stub, keep the unit's name
    stub = tmp_path / "campus-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={stub}", UNIT.read_text(), flags=re.MULTILINE))
    return unit


def test_unit__verifies_without_any_warning(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(_unit_with_stub(tmp_path))],
                       capture_output=True, text=True, check=False)
    # unknown keys and bad values are only warnings with exit 0: fail on any output
    assert r.returncode == 0, r.stdout + r.stderr
    assert not r.stdout.strip(), r.stdout
    assert not r.stderr.strip(), r.stderr


def test_unit__exposure_at_most_2(tmp_path):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                        str(_unit_with_stub(tmp_path))], capture_output=True, text=True, check=False)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    print("exposure", m.group(1))
    assert float(m.group(1)) <= 2.0
    assert r.returncode == 0


def test_unit__notify_watchdog_and_restart_policy():
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "Restart=on-failure",
                 "SupplementaryGroups=gpio video", "StateDirectory=campus-agent", "RuntimeDirectory=campus-agent",
                 "ConfigurationDirectory=campus-agent", "StartLimitBurst=10"):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line


def test_sysusers__dry_run(tmp_path):
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers not installed")
    r = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={tmp_path}",
                        str(ROOT / "systemd" / "campus-agent.sysusers")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
