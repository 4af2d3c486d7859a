"""An earlier run's event delivered before the clock is right counts with its whole wait, once it is right."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent import transmission
from agent.transmission import Transmission

PRESSED = 1.8e9  # on the last run's (right) clock
BROKER = "a:8883"


class _Clocks:
    """A monotonic clock, a wall clock that is monotonic plus an offset a test can step, and NTP's verdict."""

    def __init__(self, wall: float) -> None:
        self.mono = 500.0
        self.offset = wall - self.mono
        self.synced = False

    def wall(self) -> float:
        return self.offset + self.mono

    def make(self, tmp_path: Path, *, knows_sync: bool = True) -> Transmission:
        return Transmission(
            tmp_path / "link-stats.json",
            wall=self.wall,
            mono=lambda: self.mono,
            save_every_s=30,
            synced=(lambda: self.synced) if knows_sync else None,
        )


def _max_ms(t: Transmission) -> float | None:
    path = t.snapshot()["transmit"].get(BROKER)
    return None if path is None else path["1h"]["max_ms"]


def test_transmission__an_earlier_runs_press_delivered_before_ntp_counts_its_whole_wait_once_synced(
    tmp_path: Path,
) -> None:
    """Pressed; a 2 h power cut; a reboot on fake-hwclock (a minute after the press); the broker answers
    before NTP: the clock's error (61 s) was counted as the wait.  Held, it counts 2 h once NTP is in."""
    c = _Clocks(PRESSED + 60)
    t = c.make(tmp_path)
    t.link(True, BROKER)
    c.mono += 1.0
    t.delivered(PRESSED, this_run=False)  # really 2 h 1 s after the press
    assert _max_ms(t) is None, "counted on a clock NTP has not set"
    c.mono += 5.0
    c.offset += 7140.0  # NTP steps the clock to the real time
    c.synced = True
    assert _max_ms(t) == pytest.approx(7201_000, abs=5)
    assert t.snapshot()["transmit"][BROKER]["1h"]["count"] == 1, "counted twice"


def test_transmission__a_clock_behind_the_last_save_holds_an_earlier_runs_delivery(tmp_path: Path) -> None:
    """Without a word on NTP, a clock behind the last run's save is known wrong: the press waits for it to pass."""
    before = _Clocks(PRESSED + 30)
    first = before.make(tmp_path, knows_sync=False)
    first.link(True, BROKER)
    first.close()  # saved at PRESSED + 30
    c = _Clocks(PRESSED + 60 - 3600)  # fake-hwclock's hourly save: an hour behind
    t = c.make(tmp_path, knows_sync=False)
    t.link(True, BROKER)
    c.mono += 1.0
    t.delivered(PRESSED, this_run=False)
    assert _max_ms(t) is None
    c.offset += 3600.0 + 600.0  # NTP: the press was 11 min 1 s before the delivery
    assert _max_ms(t) == pytest.approx(661_000, abs=5)


def test_transmission__this_runs_deliveries_are_not_held_by_an_unsynchronised_clock(tmp_path: Path) -> None:
    c = _Clocks(PRESSED)
    t = c.make(tmp_path)
    t.link(True, BROKER)
    recorded = c.wall()
    c.mono += 0.25
    t.delivered(recorded)
    assert _max_ms(t) == pytest.approx(250, abs=1)


def test_transmission__held_deliveries_are_bounded_and_the_excess_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(transmission, "DEFERRED_KEPT", 3)
    c = _Clocks(PRESSED + 60)
    t = c.make(tmp_path)
    t.link(True, BROKER)
    with caplog.at_level(logging.WARNING, logger="agent.transmission"):
        for _ in range(5):
            t.delivered(PRESSED, this_run=False)
    assert caplog.text.count("wait for a synchronised clock") == 1
    c.synced = True
    assert t.snapshot()["transmit"][BROKER]["1h"]["count"] == 3
