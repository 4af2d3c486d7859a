"""scripts/install.sh in a scratch root: files land, a technician's config is never overwritten,
uninstall keeps the outbox unless asked."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install.sh"


def run(dest: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DESTDIR": str(dest),
        "SKIP_APT": "1",
        "SKIP_PIP": "1",
        "SKIP_USER": "1",
        "SKIP_SYSTEMCTL": "1",
        **env_extra,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_install__lays_out_files_and_keeps_existing_config(tmp_path: Path) -> None:
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "etc/campus-agent/agent.yaml"
    assert cfg.read_text() == (ROOT / "config/gate.yaml").read_text()
    assert oct(cfg.stat().st_mode & 0o777) == "0o644"  # no secret in it: the control group reads control.socket
    assert oct((tmp_path / "etc/campus-agent").stat().st_mode & 0o777) == "0o755"
    assert (tmp_path / "etc/systemd/system/campus-agent.service").read_text() == (
        ROOT / "systemd/campus-agent.service"
    ).read_text()
    assert os.readlink(tmp_path / "usr/local/bin/campus-agent") == "/opt/campus-agent/venv/bin/campus-agent"
    assert (tmp_path / "usr/lib/sysusers.d/campus-agent.conf").exists()

    cfg.write_text("# the technician's own file\n")
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert cfg.read_text() == "# the technician's own file\n"
    assert "kept your" in r.stdout


def test_uninstall__keeps_outbox_and_config_unless_purged(tmp_path: Path) -> None:
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


def test_install__unknown_option_exits_2(tmp_path: Path) -> None:
    r = run(tmp_path, "--bogus")
    assert r.returncode == 2
    assert "unknown option --bogus" in r.stderr


def test_install__pip_installs_with_the_pinned_constraints(tmp_path: Path) -> None:
    """Issue 14.9: dependencies come at the tested versions (constraints.txt), whatever is newest that day."""
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    python3 = fakebin / "python3"
    # plays "python3 -m venv DIR": a venv whose pip records its arguments
    python3.write_text(
        '#!/bin/sh\n[ "$1 $2" = "-m venv" ] || exit 3\nfor d; do :; done\nmkdir -p "$d/bin"\n'
        'printf \'#!/bin/sh\\necho "$@" > %s/pip-args\\n\' "$d" > "$d/bin/pip"\n'
        'chmod +x "$d/bin/pip"\n'
    )
    python3.chmod(0o755)
    dest = tmp_path / "root"
    r = run(dest, SKIP_PIP="0", PATH=f"{fakebin}:{os.environ['PATH']}")
    assert r.returncode == 0, r.stderr
    args = (dest / "opt/campus-agent/venv/pip-args").read_text().split()
    assert args[:2] == ["install", "--quiet"]
    assert f"--constraint={ROOT}/constraints.txt" in " ".join(args).replace("--constraint ", "--constraint=")


def test_constraints__pin_every_runtime_dependency_exactly() -> None:
    pins = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[name.lower()] = version
    setup = (ROOT / "setup.py").read_text()
    required = re.search(r"install_requires=\[(.*?)\]", setup, re.DOTALL)
    assert required
    for name in re.findall(r'"([A-Za-z0-9_.-]+)', required.group(1)):
        assert name.lower() in pins, f"{name} is not pinned in constraints.txt"
    text = (ROOT / "constraints.txt").read_text() + SCRIPT.read_text()
    assert "http" not in text, "no registry host is named"
