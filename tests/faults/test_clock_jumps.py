"""The wall clock jumps back and forward by hours under the running agent.

libfaketime (LD_PRELOAD) shifts the agent process's wall clock at run time:
the test writes an offset such as ``-3h`` to FAKETIME_TIMESTAMP_FILE, and
FAKETIME_NO_CACHE=1 makes the next time() see it.  The monotonic clock is left
alone (FAKETIME_DONT_FAKE_MONOTONIC=1), as on a Pi whose NTP steps the clock.

After every jump: ``ts`` of new events and of the status follows the shifted
clock; ``seq`` keeps growing and ids stay unique; presses are recorded at once
and delivered within seconds; the heartbeat keeps publishing; a dropped
connection is re-made (backoff timers run on the monotonic clock).
"""

from __future__ import annotations

import datetime as dt
import glob
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import ControlError
from tests.faults.harness import (
    EventSink,
    MakeAgent,
    MakeBroker,
    describe_missing,
    modes,
    read_recorded,
    seq_problems,
    settle,
    wait_connected,
    wait_logged,
)
from tests.support.agentproc import AgentProc, unique_id
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker

H = 3600
SHORT_JUMPS = [-3 * H, +5 * H, 0]  # offsets from the real clock, in order
FULL_JUMPS = [-3 * H, +5 * H, -26 * H, +49 * H, -1 * H, +7 * 24 * H, -30 * 24 * H, 0]
HEARTBEAT_S = 5


def _libfaketime() -> str | None:
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _parse(ts: str) -> float:
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def _near(ts: str, offset: int, slack: float = 5.0) -> bool:
    return abs(_parse(ts) - (time.time() + offset)) <= slack


def _set_offset(path: Path, offset: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{offset:+d}\n")
    tmp.replace(path)  # atomic: the agent never reads a half-written offset


@pytest.mark.parametrize("mode", modes())
def test_clock_jumps__ts_follows__seq_and_ids_hold__nothing_stalls(
    mode: str, tmp_path: Path, brokers: MakeBroker, proxies: Callable[[int], FaultProxy], agents: MakeAgent
) -> None:
    lib = _libfaketime()
    if lib is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    jumps = FULL_JUMPS if mode == "full" else SHORT_JUMPS
    presses = 10 if mode == "full" else 4
    t0 = time.monotonic()
    broker = brokers()
    proxy = proxies(broker.port)
    device = unique_id("clock")
    sink = EventSink(broker.port, device)
    offset_file = tmp_path / "faketime.offset"
    _set_offset(offset_file, 0)
    env = {
        "LD_PRELOAD": lib,
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    try:
        agent: AgentProc = agents(proxy.port, device, env=env, heartbeat={"interval_s": HEARTBEAT_S})
        wait_connected(agent)
        assert _near(agent.status()["status"]["ts"], 0), "libfaketime shifted the clock before any jump"
        expected: dict[str, float] = {}  # event id -> the shifted wall clock when it was pressed
        total = 0
        slowest_record = slowest_delivery = 0.0
        beats: list[float] = []
        previous = 0
        for i, offset in enumerate(jumps):
            _set_offset(offset_file, offset)
            eventually(
                lambda: _near(agent.status()["status"]["ts"], offset),
                5,
                f"agent clock at {offset:+d} s",
                retry_on=(ControlError,),
            )
            if i % 2 == 0:  # drop the link now and then: the reconnect backoff must not care about the jump
                before = agent.status()["status"]["link"]["reconnects"]
                proxy.drop_all()
                eventually(
                    lambda: (st := agent.status())["link"]["connected"] and st["status"]["link"]["reconnects"] > before,
                    10,
                    "the agent to reconnect",
                    retry_on=(ControlError,),
                )
            for _ in range(presses):
                t, wall = time.monotonic(), time.time() + offset
                agent.click()
                total += 1
                rec = wait_logged(agent, total, timeout=5)
                slowest_record = max(slowest_record, time.monotonic() - t)
                new = [r for r in rec.values() if r.type == "panic" and r.id not in expected]
                assert len(new) == 1, new
                expected[new[0].id] = wall
                eventually(
                    lambda: not sink.missing({new[0].id}), 5, f"the press to be delivered after a {offset:+d} s jump"
                )
                slowest_delivery = max(slowest_delivery, time.monotonic() - t)
            # the periodic heartbeat still beats (not one triggered by a change), with the shifted clock; it
            # waits a whole interval, and only a jump back can stall a timer read off the wall clock (one forward
            # fires it early), so the short run looks after the jumps back only
            back, previous = offset < previous, offset
            if mode != "full" and not back:
                continue
            quiet = time.monotonic() + 1.0
            beat_t, _ = sink.wait_status(
                lambda d: d.get("state") == "online" and _near(d["ts"], offset),
                HEARTBEAT_S + 3,
                since=quiet,
                what=f"a heartbeat status at {offset:+d} s",
            )
            beats.append(beat_t - quiet)

        recorded = read_recorded(agent.log)
        wrong_ts = [
            (eid[:8], sink.docs[eid]["ts"], wall)
            for eid, wall in expected.items()
            if not abs(_parse(sink.docs[eid]["ts"]) - wall) < 2.0
        ]
        row = settle(
            f"clock jumps x{len(jumps)}",
            t0,
            recorded,
            sink,
            timeout=20,
            note=f"offsets {', '.join(f'{o / H:+g}h' for o in jumps)}; press recorded in "
            f"<= {slowest_record * 1000:.0f} ms, delivered in <= {slowest_delivery * 1000:.0f} ms, "
            f"heartbeat within {max(beats):.1f} s",
        )
        assert row.lost == 0, describe_missing(row, recorded)
        assert not seq_problems(recorded, sink)
        in_press_order = sorted((r for r in recorded.values() if r.id in expected), key=lambda r: r.order)
        seqs = [r.seq for r in in_press_order if r.seq is not None]
        assert len(seqs) == len(in_press_order), "a press was never saved to disk"
        assert seqs == sorted(seqs), "seq not increasing in press order"
        assert len(set(seqs)) == len(seqs), "seq repeated"
        monos = [sink.docs[r.id]["mono_ms"] for r in in_press_order]
        assert monos == sorted(monos), "mono_ms went back with the wall clock"
        assert not wrong_ts, f"event ts does not follow the clock: {wrong_ts[:5]}"
        # the jumps are hours: a wait on the wall clock would stall far longer than this ceiling
        assert slowest_record < 5.0, f"a press took {slowest_record:.2f} s to be recorded: something stalled"
        assert agent.stop() == 0
    finally:
        sink.close()
