"""The fleet load generator stays honest: a small fleet through bench/fleet.py, in the test suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.broker
def test_fleet_bench__small_fleet_every_event_shown_once_by_monitor_and_reference(tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/fleet.py"),
            "--sizes",
            "40",
            "--consumers",
            "monitor,reference",
            "--phases",
            "1,1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [r["consumer"] for r in doc["results"]] == ["monitor", "reference"]
    for r in doc["results"]:
        assert r["devices"] == 40
        assert r["events"] >= 400  # 500 a second for one second, give or take the pacing tick
        assert (r["missed"], r["duplicated"]) == (0, 0), r  # 1 % were sent twice: de-dup must hide them
        assert r["ingest_s"] > 0
        assert r["rss_mb"] > 0
    assert "| 40 |" in out.with_suffix(".md").read_text()
    assert doc["memory_per_device_bytes"]["bytes_per_device"] > 0
