"""scripts/install.sh in a scratch root: files land, a technician's config is never overwritten,
uninstall keeps the outbox unless asked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install.sh"


def run(dest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DESTDIR=str(dest), SKIP_APT="1", SKIP_PIP="1", SKIP_USER="1", SKIP_SYSTEMCTL="1")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def test_install__lays_out_files_and_keeps_existing_config(tmp_path):
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "etc/campus-agent/agent.yaml"
    assert cfg.read_text() == (ROOT / "config/gate.yaml").read_text()
    assert oct(cfg.stat().st_mode & 0o777) == "0o640"
    assert (tmp_path / "etc/systemd/system/campus-agent.service").read_text() == \
        (ROOT / "systemd/campus-agent.service").read_text()
    assert os.readlink(tmp_path / "usr/local/bin/campus-agent") == "/opt/campus-agent/venv/bin/campus-agent"
    assert (tmp_path / "usr/lib/sysusers.d/campus-agent.conf").exists()

    cfg.write_text("# the technician's own file\n")
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert cfg.read_text() == "# the technician's own file\n"
    assert "kept your" in r.stdout


def test_uninstall__keeps_outbox_and_config_unless_purged(tmp_path):
    assert run(tmp_path).returncode == 0
    outbox = tmp_path / "var/lib/campus-agent/outbox.db"
    outbox.parent.mkdir(parents=True)
    outbox.write_bytes(b"events")
    r = run(tmp_path, "--uninstall")
    assert r.returncode == 0, r.stderr
    assert outbox.exists()
    assert (tmp_path / "etc/campus-agent/agent.yaml").exists()
    assert not (tmp_path / "opt/campus-agent").exists()
    assert not (tmp_path / "etc/systemd/system/campus-agent.service").exists()
    r = run(tmp_path, "--uninstall", "--purge")
    assert r.returncode == 0, r.stderr
    assert not outbox.exists()
    assert not (tmp_path / "etc/campus-agent").exists()


def test_install__unknown_option_exits_2(tmp_path):
    r = run(tmp_path, "--bogus")
    assert r.returncode == 2
    assert "unknown option --bogus" in r.stderr
