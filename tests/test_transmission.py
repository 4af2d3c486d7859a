"""Transmission figures in status: fed by the link and PUBACKs, saved at most once an interval, kept across SIGKILL."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import format_status
from agent.linkstats import LinkStats
from agent.transmission import Transmission
from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.clocks import FakeTime
from tests.support.contract import Validate
from tests.support.waiting import eventually


def make(tmp_path: Path, clock: FakeTime, every: float = 30.0) -> Transmission:
    return Transmission(tmp_path / "link-stats.json", wall=clock.wall, mono=clock, save_every_s=every)


def test_transmission__delivered_counts_for_the_connected_broker_only(tmp_path: Path, fake_time: FakeTime) -> None:
    t = make(tmp_path, fake_time)
    t.delivered(fake_time.wall() - 1)  # no broker yet: nothing to attribute it to
    t.link(True, "a:8883")
    t.delivered(fake_time.wall() - 0.004)
    t.delivered(fake_time.wall() - 0.5)
    fake_time.advance(60)
    t.link(False, None)
    t.delivered(fake_time.wall() - 0.1)
    transmit = t.snapshot()["transmit"]
    assert list(transmit) == ["a:8883"]
    hour = transmit["a:8883"]["1h"]
    assert hour["count"] == 2
    assert hour["max_ms"] == pytest.approx(500, rel=0.01)
    assert t.snapshot()["availability"]["24h"]["outages"] == 1  # the one running since link_down


def test_transmission__saves_at_most_once_an_interval_and_restores(tmp_path: Path, fake_time: FakeTime) -> None:
    t = make(tmp_path, fake_time, every=30.0)
    t.link(True, "a:1883")
    t.save()
    first = (tmp_path / "link-stats.json").read_bytes()
    for _ in range(10):
        t.delivered(fake_time.wall() - 0.01)
    fake_time.advance(10)
    t.save()  # 10 s after the last save: not yet
    assert (tmp_path / "link-stats.json").read_bytes() == first
    fake_time.advance(25)
    t.save()
    assert (tmp_path / "link-stats.json").read_bytes() != first
    t.close()
    t.close()  # idempotent
    again = make(tmp_path, fake_time)
    assert again.snapshot()["transmit"] == t.snapshot()["transmit"]
    assert again.snapshot()["transmit"]["a:1883"]["1h"]["count"] == 10
    # restarted: down until the next connect, so the gap counts as an outage (erring on the operator's side)
    assert again.snapshot()["availability"]["24h"]["outages"] == 1
    assert "closed" in repr(t)


def test_transmission__unreadable_or_unwritable_file_never_raises(
    tmp_path: Path, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "link-stats.json").write_text("{not json")
    t = make(tmp_path, fake_time)
    assert "start afresh" in caplog.text
    t.path = tmp_path / "missing-dir" / "x.json"
    t.save(force=True)
    t.save(force=True)
    assert caplog.text.count("cannot write") == 1


def saved_stats(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())  # written whole and renamed: never half a file
    return LinkStats.from_state(doc, time.time()).snapshot(time.time())


@pytest.mark.broker
def test_status__link_stats_survive_sigkill(
    tmp_path: Path, broker: Broker, device: str, agent_proc: AgentFactory, validate: Validate
) -> None:
    agent = agent_proc(broker.port, device=device, heartbeat={"interval_s": 5})
    agent.click()
    agent.wait_recorded(1)
    saved = tmp_path / device / "link-stats.json"

    def delivered_count(stats: dict[str, Any]) -> int:
        return sum(path["31d"]["count"] for path in stats.get("transmit", {}).values())

    def delivered_and_saved() -> dict[str, Any] | None:
        status: dict[str, Any] = agent.status()["status"]
        if (
            delivered_count(status["link"].get("stats", {})) >= 1
            and saved.exists()
            and delivered_count(saved_stats(saved)) >= 1
        ):
            return status
        return None

    status = eventually(
        delivered_and_saved,
        30.0,
        lambda: f"a delivery in the saved figures; status link: {agent.status()['status']['link']}",
        interval=0.1,
    )
    validate("status", status)
    agent.kill()
    agent.start()
    reply = agent.status()
    after = reply["status"]
    validate("status", after)
    assert delivered_count(after["link"]["stats"]) >= 1
    shown = format_status(reply)  # what `campus-agent status` prints
    assert f"via 127.0.0.1:{broker.port}: " in shown
    assert "31d n=" in shown
    assert "link up  24h " in shown


class _SteppingClocks:
    """A monotonic clock and a wall clock that is monotonic plus an offset a test can step."""

    def __init__(self, offset: float) -> None:
        self.mono = 500.0
        self.offset = offset

    def wall(self) -> float:
        return self.offset + self.mono

    def advance(self, s: float) -> None:
        self.mono += s


def _stepping(tmp_path: Path, offset: float) -> tuple[_SteppingClocks, Transmission]:
    c = _SteppingClocks(offset)
    return c, Transmission(tmp_path / "link-stats.json", wall=c.wall, mono=lambda: c.mono, save_every_s=30)


def test_transmission__an_ntp_step_while_an_alarm_waits_is_not_transmission_time(tmp_path: Path) -> None:
    """A Pi booted offline two days behind, pressed, then set right by NTP: a 2 s delivery read two days."""
    c, t = _stepping(tmp_path, 1.8e9 - 2 * 86400)
    recorded = c.wall()
    c.advance(2.0)
    t.link(True, "a:8883")
    c.offset += 2 * 86400
    c.advance(0.05)
    t.delivered(recorded)
    assert t.snapshot()["transmit"]["a:8883"]["1h"]["max_ms"] == pytest.approx(2050, abs=5)


def test_transmission__a_step_back_while_an_alarm_waits_is_not_taken_off_its_time(tmp_path: Path) -> None:
    c, t = _stepping(tmp_path, 1.8e9 + 3600)
    t.link(True, "a:8883")
    recorded = c.wall()
    c.advance(30.0)
    c.offset -= 3600
    t.delivered(recorded)
    assert t.snapshot()["transmit"]["a:8883"]["1h"]["max_ms"] == pytest.approx(30_000, abs=5)


def test_transmission__a_recording_that_cannot_be_placed_around_a_step_is_not_counted(tmp_path: Path) -> None:
    c, t = _stepping(tmp_path, 1.8e9)
    t.link(True, "a:8883")
    c.advance(30.0)  # no sample for 30 s: the step below happened somewhere in them
    c.offset -= 20
    recorded = c.wall() - 15  # on either clock, this could be before or after the step
    t.delivered(recorded)
    assert "a:8883" not in t.snapshot()["transmit"]
    c.advance(25.0)
    later = c.wall()  # later than any time the old clock showed: on the new clock only
    c.advance(0.5)
    t.delivered(later)
    assert t.snapshot()["transmit"]["a:8883"]["1h"]["max_ms"] == pytest.approx(500, abs=5)


def test_transmission__an_event_of_an_earlier_run_counts_its_whole_wait(tmp_path: Path) -> None:
    """Pressed, a 2 h power cut, a reboot on fake-hwclock (a minute after the press), then NTP: the step this
    run saw said nothing of the clock the press was recorded on; correcting by it hid the 2 h wait."""
    recorded = 1.8e9  # on the last run's (right) clock
    c, t = _stepping(tmp_path, recorded + 60 - 500)  # this run starts a minute after it, 2 h behind
    t.link(True, "a:8883")
    c.advance(1.0)
    c.offset += 7140  # NTP: the real time is 2 h after the press
    c.advance(1.0)
    t.delivered(recorded, this_run=False)
    assert t.snapshot()["transmit"]["a:8883"]["1h"]["max_ms"] == pytest.approx(7202_000, abs=5)


_CLOCK_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.01, 100)),
        st.tuples(st.just("step"), st.one_of(st.floats(-5000, -1.5), st.floats(1.5, 5000))),
        st.tuples(st.just("sample"), st.just(0.0)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(before=_CLOCK_OPS, after=_CLOCK_OPS)
def test_transmission__any_clock_steps_give_the_true_time_or_none(
    before: list[tuple[str, float]], after: list[tuple[str, float]]
) -> None:
    """Whatever steps come before and after a recording, a time counted is the monotonic time that passed.

    One limit, documented in agent/transmission.py: a step is seen between two
    samples, so two steps with no sample between them read as one, and a
    recording made between them cannot be placed.  The strategy samples before
    every second step.
    """
    with tempfile.TemporaryDirectory() as d:
        c, t = _stepping(Path(d), 1.8e9)
        t.link(True, "a:8883")
        unseen = [False]

        def run(ops: list[tuple[str, float]]) -> None:
            for op, value in ops:
                if op == "advance":
                    c.advance(value)
                elif op == "step":
                    if unseen[0]:
                        t.snapshot()
                    c.offset += value
                    unseen[0] = True
                else:
                    t.snapshot()
                    unseen[0] = False

        run(before)
        recorded_mono, recorded = c.mono, c.wall()
        run(after)
        got: list[float] = []
        t.stats.delivered = lambda _broker, taken, _now: got.append(taken)  # type: ignore[method-assign,assignment]
        t.delivered(recorded)
        if got:
            assert got[0] == pytest.approx(c.mono - recorded_mono, abs=0.01)
