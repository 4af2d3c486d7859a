"""`make demo` runs scripts/demo.py: it must show panic events arriving at the broker, then stop cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.broker
def test_demo__shows_panic_events_and_stops(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--duration", "4", "--every", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    panic_lines = [line for line in r.stdout.splitlines() if "EVENT" in line and " panic " in line]
    assert len(panic_lines) >= 2, r.stdout
    assert "STATUS" in r.stdout
    assert "OFFLINE (shutdown)" in r.stdout
    assert "demo: stopped" in r.stdout
