"""The fleet bench's smaller tools stay honest: the profile driver and the shared-subscription bench at a small N."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_fleet_profile__every_status_reaches_the_fleet_view(protocol: str) -> None:
    run = _run(str(ROOT / "bench/fleet_profile.py"), "--devices", "300", "--protocol", protocol, "--steady", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["seen"] == 301  # every device and the sentinel
    assert {"ingest_s", "steady_cpu_pct", "wakeups_per_s"} <= got.keys()  # the figures the bench reports


@pytest.mark.broker
def test_fleet_shared__a_group_splits_the_events_and_misses_none(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    run = _run(
        str(ROOT / "bench/fleet_shared.py"), "--devices", "40", "--consumers", "2", "--phases", "1,1", "--out", str(out)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["results"]
    assert row["consumers"] == 2
    assert row["events"] >= 400
    assert row["missed"] == 0
    assert all(n > 0 for n in row["events_each"])  # both members took a share
    assert sum(row["events_each"]) == row["events"] + row["duplicated"]  # each shown once, or by two members
    assert "| 40 | 2 |" in out.with_suffix(".md").read_text()
