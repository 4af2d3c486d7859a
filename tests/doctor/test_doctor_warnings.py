"""doctor on patrol with the agent running: the warnings in the agent's own status become doctor lines.

The statuses are built by the agent's own code (``Health`` with ``Notices`` as
its warnings, sections made to raise), so the texts judged here are the ones a
running agent sends, not copies of them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from agent.config import Config, load_config
from agent.config.model import InputKind
from agent.control import ControlServer
from agent.doctor.checks import Check, Level
from agent.doctor.runner import Host, run_doctor
from agent.doctor.running import check_held_pins, check_running_agent, check_warnings
from agent.health import Health, StatusSources, TestMode
from agent.notices import Notices
from agent.outbox import Outbox
from agent.uplink import LinkState
from agent.watched_input import InputState
from tests.doctor.test_doctor import write_cfg
from tests.support.broker import Broker
from tests.support.clocks import FakeTime

LINK = LinkState(
    connected=True,
    broker="127.0.0.1:1883",
    connected_since=1.7e9,
    reconnects=0,
    last_error=None,
    inflight=0,
    published=0,
    delivered=0,
    refused=0,
    protocol="5",
    commands_available=True,
)
PANIC = InputState("panic", InputKind.PANIC_BUTTON.value, 17, "ok", None, None, None)


def io_error() -> NoReturn:
    raise OSError(5, "Input/output error")


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load_config(write_cfg(tmp_path / "agent", 1883))


def status_reply(
    cfg: Config, outbox: Outbox, *, held: int = 0, failing: tuple[str, ...] = (), **raising: Any
) -> dict[str, Any]:
    """The control socket's ``status`` reply of an agent whose sections in ``raising`` raise."""
    fake = FakeTime()
    notices = Notices(cfg, wall=fake.wall, mono=fake, held=lambda: held, outputs=lambda: list(failing))
    sources: dict[str, Any] = {"link": lambda: LINK, "inputs": lambda: {"panic": PANIC}, "warnings": notices.lines}
    health = Health(
        site="main",
        device="gate-1",
        clock=fake.clock(),
        outbox=outbox,
        sources=StatusSources(**(sources | raising)),
        test_mode=TestMode(fake.clock()),
    )
    return {"status": health.status(), "link": {"connected": True, "broker": LINK.broker}, "config": str(cfg.source)}


def lines_of(found: list[Check]) -> str:
    return "\n".join(c.line() for c in found)


def test_check_running_agent__held_events_and_an_unreadable_section_fail(cfg: Config, outbox: Outbox) -> None:
    """Events held in memory, an LED/buzzer that cannot be switched, inputs that cannot be read: every
    line said OK (and "GPIO held by the running agent: no inputs" for a post with a panic button)."""
    reply = status_reply(cfg, outbox, held=2, failing=("buzzer",), inputs=io_error)
    found = check_running_agent(reply, cfg) + check_held_pins(reply, cfg)
    report = lines_of(found)
    fails = [c.what for c in found if c.level is Level.FAIL]
    assert any("2 events held in memory: outbox cannot write" in w for w in fails), report
    assert any("status incomplete, cannot read: inputs (OSError" in w for w in fails), report
    assert any("input panic (GPIO17) is configured but the running agent does not report it" in w for w in fails)
    [led] = [c for c in found if "buzzer cannot be switched" in c.what]
    assert led.level is Level.WARN, report
    assert "no inputs" not in report
    assert all("journalctl -u campus-agent" in c.todo for c in found if c.level is Level.FAIL), report


def test_check_running_agent__a_healthy_status_is_all_ok(cfg: Config, outbox: Outbox) -> None:
    reply = status_reply(cfg, outbox)
    found = check_running_agent(reply, cfg) + check_held_pins(reply, cfg)
    assert all(c.level is Level.OK for c in found), lines_of(found)
    assert "GPIO held by the running agent: panic ok (GPIO17)" in lines_of(found)


def test_check_running_agent__a_side_section_alone_is_a_warn(cfg: Config, outbox: Outbox) -> None:
    """Cameras that cannot be read hide nothing about an alarm's way out."""
    reply = status_reply(cfg, outbox, cameras=io_error)
    [warn] = [c for c in check_running_agent(reply, cfg) if c.level is not Level.OK]
    assert warn.level is Level.WARN
    assert "status incomplete, cannot read: cameras" in warn.what


@pytest.mark.parametrize(
    ("text", "level", "todo"),
    [
        ("status incomplete, cannot read: system (OSError: x), outbox (OperationalError: y)", Level.FAIL, "journalctl"),
        ("status incomplete, cannot read: system (OSError: a message cut at the status's length li", Level.FAIL, ""),
        ("status incomplete, cannot read: system (OSError: x), photos (OSError: y)", Level.WARN, "journalctl"),
        ("LED/buzzer unavailable: GPIO22 busy", Level.WARN, "alarms are still sent"),
        (
            "the MQTT password is sent without TLS (mqtt.allow_plaintext_password: true); lab use only",
            Level.WARN,
            "lab",
        ),
        ("something a newer agent says", Level.WARN, "journalctl -u campus-agent -n 50"),
    ],
)
def test_check_warnings__levels(cfg: Config, text: str, level: Level, todo: str) -> None:
    [c] = check_warnings([text], cfg)
    assert (c.level, c.what) == (level, f"agent warns: {text}")
    assert todo in c.todo


def test_check_warnings__certificate_left_to_doctors_own_line_for_the_same_config(cfg: Config) -> None:
    text = "client certificate /etc/campus-agent/client.crt expires on 2027-01-01 (in 9 days); renew it"
    assert check_warnings([text], cfg) == []
    [c] = check_warnings([text], cfg, same_config=False)
    assert c.level is Level.WARN


# ---- the whole run, a control socket answering with the agent's own status -------------------


@pytest.fixture
def serve_status(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, Any]], None]]:
    servers: list[ControlServer] = []

    def serve(path: Path, reply: dict[str, Any]) -> None:
        path.parent.mkdir(exist_ok=True)  # write_cfg leaves only the path
        server = ControlServer(path, {"status": lambda _req: reply})
        server.start()
        servers.append(server)

    yield serve
    for server in servers:
        server.close()


def doctor(cfg: Config) -> tuple[int, str]:
    out = io.StringIO()
    rc = run_doctor(cfg.source, timeout_s=2.0, out=out, host=Host(clock_synced=lambda: True, systemctl=None))
    return rc, out.getvalue()


@pytest.mark.broker
def test_doctor__the_running_agents_held_events_fail_the_run(
    tmp_path: Path, broker: Broker, outbox: Outbox, serve_status: Callable[[Path, dict[str, Any]], None]
) -> None:
    cfg = load_config(write_cfg(tmp_path / "agent", broker.port))
    serve_status(cfg.control.socket, status_reply(cfg, outbox, held=2))
    rc, out = doctor(cfg)
    assert rc == 1, out
    assert "FAIL  agent warns: 2 events held in memory: outbox cannot write" in out
    assert out.rstrip().endswith(", 0 WARN, 1 FAIL"), out  # that line alone


@pytest.mark.broker
def test_doctor__a_healthy_running_agent_passes(
    tmp_path: Path, broker: Broker, outbox: Outbox, serve_status: Callable[[Path, dict[str, Any]], None]
) -> None:
    cfg = load_config(write_cfg(tmp_path / "agent", broker.port))
    serve_status(cfg.control.socket, status_reply(cfg, outbox))
    rc, out = doctor(cfg)
    assert rc == 0, out
    assert "OK    GPIO held by the running agent: panic ok (GPIO17)" in out
