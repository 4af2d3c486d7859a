"""``campus-agent run`` keeps no command-line parser: argparse is forgotten before the daemon starts (memory)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from tests.support.agentproc import run_python, write_config


def test_run__the_daemon_starts_without_argparse_and_with_its_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("argparse", "gettext"):  # restored after the test: pytest itself uses them
        if name in sys.modules:
            monkeypatch.setitem(sys.modules, name, sys.modules[name])
    seen: dict[str, Any] = {}

    def fake_run(args: Any) -> int:
        seen["modules"] = {n for n in ("argparse", "gettext") if n in sys.modules}
        seen["args"] = (args.config, args.log_level, args.allow_root)
        return 0

    monkeypatch.setattr(cli, "cmd_run", fake_run)
    cfg = tmp_path / "agent.yaml"
    assert cli.main(["run", "-c", str(cfg), "--log-level", "debug", "--allow-root"]) == 0
    assert seen["modules"] == set(), f"still imported: {seen['modules']}"
    assert seen["args"] == (Path(cfg), "debug", True)


def test_other_commands__keep_the_parser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if "argparse" in sys.modules:
        monkeypatch.setitem(sys.modules, "argparse", sys.modules["argparse"])
    seen: dict[str, bool] = {}

    def fake_check(_args: Any) -> int:
        seen["argparse"] = "argparse" in sys.modules
        return 0

    monkeypatch.setattr(cli, "cmd_check_config", fake_check)
    assert cli.main(["check-config", str(tmp_path / "x.yaml")]) == 0
    assert seen == {"argparse": True}


_FORGOTTEN = """
import sys
import agent.daemon
from agent import cli


class FakeAgent:
    def __init__(self, cfg):
        self.cfg = cfg

    def run(self):
        kept = [n for n in ("agent.config", "agent.config.schema", "agent.config.files") if n in sys.modules]
        print(self.cfg.device.id, kept)
        return 0


agent.daemon.Agent = FakeAgent
sys.exit(cli.main(["run", "-c", sys.argv[1], "--allow-root"]))
"""


def test_run__the_daemon_starts_without_the_config_loader(tmp_path: Path) -> None:
    # a child process: forgetting agent.config here would disturb the other tests
    cfg = write_config(tmp_path, 1883, device="forgets")
    r = run_python("-c", _FORGOTTEN, str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "forgets []"
