"""Swinger shutdown: a flapping tamper loop is bounded, a panic button never is.

A loose wire on a normally-closed tamper loop breaking contact for 100 ms
every 200 ms made one real alarm per opening (300 a minute), each synced,
never evicted, photographed and chirped, and ahead of any later panic press in
the real-alarm lane.  Mock pins and fake time: a minute of flapping runs in
milliseconds.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.config.model import Contact, InputConfig, InputKind
from agent.errors import ConfigError
from agent.events import Clock, Event, EventType, with_seq
from agent.health import Health, StatusSources, TestMode
from agent.inputs import Inputs
from agent.linkstate import LinkState
from agent.outbox import Outbox
from tests.support.clocks import FakeTime

Validate = Any
Events = list[tuple[str, str, dict[str, Any]]]
LINK = LinkState(True, "b:1883", 1.7e9, 0, None, 0, 0, 0, 0, "5", True, True, None)

CONFIG = """\
device: {id: gate-north-1, site: main}
mqtt:
  host: 127.0.0.1
gpio: {pin_factory: mock}
inputs:
  - {name: panic, pin: 17}
  - {name: lid, kind: tamper, pin: 27}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gate.yaml"
    p.write_text(textwrap.dedent(text))
    return p


class Rig:
    """Inputs on mock pins with fake time, polled by hand; keeps every event the emit got."""

    def __init__(self, configs: tuple[InputConfig, ...], factory: Any) -> None:
        self.time = FakeTime()
        self.clock: Clock = self.time.clock(synced=True)
        self.events: Events = []
        self.factory = factory
        self.inputs = Inputs(configs, pin_factory=factory, clock=self.clock, emit=self._emit)
        self.inputs.arm(start_thread=False)

    def _emit(self, batch: list[Any]) -> None:
        self.events.extend((kind.value, source, dict(data)) for kind, source, _stamp, data in batch)

    def kinds(self, source: str) -> list[str]:
        return [k for k, s, _ in self.events if s == source]

    def wait(self, seconds: float) -> None:
        self.time.advance(seconds)
        self.inputs.poll(self.time.t)

    def set(self, name: str, *, active: bool, hold_s: float) -> None:
        self.inputs.simulate(name, active=active)
        self.wait(hold_s)

    def flap(self, name: str, times: int) -> None:
        """A loose wire: open 100 ms, closed 100 ms, ``times`` times."""
        for _ in range(times):
            self.set(name, active=True, hold_s=0.1)
            self.set(name, active=False, hold_s=0.1)

    def state(self, name: str) -> str:
        return self.inputs.states()[name].state


@pytest.fixture
def rig(tmp_path: Path, mock_factory: Any) -> Iterator[Rig]:
    """The panic button and tamper loop of CONFIG, with the config file's defaults."""
    r = Rig(load_config(_write(tmp_path, CONFIG)).inputs, mock_factory)
    yield r
    r.inputs.close()


def test_flapping__loose_wire_on_tamper_loop_is_bounded(rig: Rig) -> None:
    rig.flap("lid", 300)  # one minute of a wire making and breaking contact
    assert rig.kinds("lid") == ["tamper"] * 5 + ["input_fault"], rig.kinds("lid")[:12]
    fault = rig.events[-1][2]
    assert fault == {"reason": "flapping", "alarms": 5, "window_s": 60.0}
    assert rig.state("lid") == "fault", "closed at this moment, but still shut down: the status must say so"


def test_flapping__restored_after_quiet_then_alarms_again(rig: Rig) -> None:
    rig.flap("lid", 10)
    released = rig.time.t - 0.1  # the last closing's stamp
    assert rig.inputs._next_deadline() == pytest.approx(released + 60), "the thread must wake for the restore"
    rig.wait(30)
    rig.flap("lid", 1)  # the wire moves again half-way through the quiet: the quiet starts over
    released = rig.time.t - 0.1
    rig.wait(59.5 - 0.1)
    assert rig.kinds("lid")[-1] == "input_fault"
    assert rig.state("lid") == "fault"
    rig.wait(0.6)
    assert rig.kinds("lid")[-1] == "input_restored"
    fault_at = 1001.0  # the sixth opening (fake time starts at 1000 s)
    assert rig.events[-1][2]["held_s"] == pytest.approx(released - fault_at, abs=0.01)
    assert rig.time.t >= released + 60
    assert rig.state("lid") == "ok"
    rig.set("lid", active=True, hold_s=0.1)
    assert rig.kinds("lid")[-1] == "tamper", "a real opening after the quiet is an alarm again"


def test_flapping__active_loop_is_not_at_rest(rig: Rig) -> None:
    rig.flap("lid", 6)
    rig.set("lid", active=True, hold_s=600)  # the wire finally breaks: open for ten minutes
    assert rig.kinds("lid") == ["tamper"] * 5 + ["input_fault"]
    assert rig.state("lid") == "fault"
    rig.set("lid", active=False, hold_s=59.9)  # mended
    assert rig.kinds("lid")[-1] == "input_fault", "not yet a full minute at rest"
    rig.wait(0.2)
    assert rig.kinds("lid")[-1] == "input_restored"
    assert rig.events[-1][2]["held_s"] == pytest.approx(600.2, abs=0.01), "from the fault to the mending"


def test_flapping__panic_button_is_never_limited(rig: Rig, mock_factory: Any) -> None:
    rig.flap("panic", 50)
    assert rig.kinds("panic") == ["panic"] * 50
    coded = InputConfig("desk", InputKind.PANIC_BUTTON, 5, Contact.NORMALLY_OPEN, 0, 0.0, False, flap_limit=2)
    desk = Rig((coded,), mock_factory)  # a limit given in code is ignored too
    try:
        desk.flap("desk", 10)
        assert desk.kinds("desk") == ["panic"] * 10
    finally:
        desk.inputs.close()


def test_flapping__zero_limit_disables(tmp_path: Path, mock_factory: Any) -> None:
    text = CONFIG.replace("pin: 27}", "pin: 27, flap_limit: 0}")
    r = Rig(load_config(_write(tmp_path, text)).inputs, mock_factory)
    try:
        r.flap("lid", 20)
        assert r.kinds("lid") == ["tamper"] * 20
    finally:
        r.inputs.close()


def test_flapping__open_loop_still_reported(tmp_path: Path, mock_factory: Any) -> None:
    text = CONFIG.replace("pin: 27}", "pin: 27, stuck_after_s: 10}")
    r = Rig(load_config(_write(tmp_path, text)).inputs, mock_factory)
    try:
        r.set("lid", active=True, hold_s=0.1)
        for _ in range(20):
            r.wait(1)
        assert r.kinds("lid") == ["tamper", "input_fault"]
        assert r.events[-1][2]["reason"] == "open_loop"
        r.set("lid", active=False, hold_s=0.1)
        assert r.kinds("lid")[-1] == "input_restored"
        r.flap("lid", 4)  # the open loop's alarm counts: 5 alarms, then the next opening is the fault
        r.flap("lid", 1)
        assert r.kinds("lid")[-1] == "input_fault"
        assert r.events[-1][2]["reason"] == "flapping"
    finally:
        r.inputs.close()


def test_flapping__status_and_event_follow_the_contract(rig: Rig, outbox: Outbox, validate: Validate) -> None:
    health = Health(
        site="main",
        device="gate-1",
        clock=rig.clock,
        outbox=outbox,
        sources=StatusSources(link=lambda: LINK, inputs=rig.inputs.states),
        test_mode=TestMode(rig.clock),
    )
    rig.flap("lid", 6)
    doc = validate("status", health.status())
    assert doc["inputs"]["lid"]["state"] == "fault"
    assert doc["inputs"]["panic"]["state"] == "ok"
    kind, source, data = rig.events[-1]
    event = Event.create(rig.clock, EventType(kind), source, data=data)
    validate("event", json.loads(with_seq(event.body("main", "gate-1"), 7)))


def test_load__flap_defaults(tmp_path: Path) -> None:
    panic, lid = load_config(_write(tmp_path, CONFIG)).inputs
    assert (lid.flap_limit, lid.flap_window_s) == (5, 60.0)
    assert panic.flap_limit == 0


BAD = [
    (
        "panic_with_flap_limit",
        CONFIG.replace("pin: 17}", "pin: 17, flap_limit: 3}"),
        6,
        r"inputs\[0\]\.flap_limit: a panic_button is never limited: every press is a person calling for help; "
        r"remove flap_limit \(it is for kind: tamper\)",
    ),
    (
        "panic_with_flap_window",
        CONFIG.replace("pin: 17}", "pin: 17,\n     flap_window_s: 30}"),
        7,
        r"inputs\[0\]\.flap_window_s: a panic_button is never limited.*remove flap_window_s",
    ),
    (
        "negative_limit",
        CONFIG.replace("pin: 27}", "pin: 27, flap_limit: -1}"),
        7,
        r"inputs\[1\]\.flap_limit: expected alarms \(0 = never limit\) 0-1000, got -1",
    ),
    (
        "limit_as_text",
        CONFIG.replace("pin: 27}", "pin: 27, flap_limit: five}"),
        7,
        r"inputs\[1\]\.flap_limit: expected alarms \(0 = never limit\) 0-1000, got 'five'",
    ),
    (
        "window_too_short",
        CONFIG.replace("pin: 27}", "pin: 27, flap_window_s: 0.5}"),
        7,
        r"inputs\[1\]\.flap_window_s: expected a number 1-86400 seconds, got 0.5",
    ),
    (
        "typo_did_you_mean",
        CONFIG.replace("pin: 27}", "pin: 27, flap_limt: 3}"),
        7,
        r"inputs\[1\]\.flap_limt: unknown key; did you mean 'flap_limit'\?",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_load__flap_invalid(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    found = [p for p in err.value.problems if re.search(message, p)]
    assert found, err.value.problems
    assert found[0].startswith(f"{path}:{line}: "), found[0]
    assert len(err.value.problems) == 1, err.value.problems


def test_load__flap_keys_on_a_wrong_kind_blame_only_the_kind(tmp_path: Path) -> None:
    path = _write(tmp_path, CONFIG.replace("kind: tamper, pin: 27}", "kind: tampr, pin: 27, flap_limit: 3}"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(err.value.problems) == 1, err.value.problems
    assert "did you mean 'tamper'" in err.value.problems[0]
