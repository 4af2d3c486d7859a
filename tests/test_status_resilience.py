"""A status section that cannot be built: the rest of the status still goes out, and the link stays up."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from agent import health as health_module
from agent.config.model import InputKind
from agent.errors import OutboxError
from agent.events import Clock, Event, EventType
from agent.health import Health, StatusSources, TestMode
from agent.outbox import Outbox
from agent.uplink import LinkState, Uplink
from agent.watched_input import InputState
from tests.support.broker import Broker
from tests.support.clocks import FakeTime
from tests.support.contract import Validate
from tests.support.mqtt import Central
from tests.support.uplinkrig import mqtt_cfg
from tests.support.waiting import eventually

LINK = LinkState(
    connected=True,
    broker="b:1883",
    connected_since=1.7e9,
    reconnects=2,
    last_error=None,
    inflight=0,
    published=0,
    delivered=0,
    refused=0,
)
PANIC = InputState("panic", InputKind.PANIC_BUTTON.value, 17, "ok", None, None, None)


def disk_error(*_args: object, **_kw: object) -> NoReturn:
    raise sqlite3.OperationalError("disk I/O error")


def make_health(outbox: Outbox, fake_time: FakeTime, **sources: Any) -> Health:
    clock = fake_time.clock()
    defaults: dict[str, Any] = {
        "link": lambda: LINK,
        "inputs": lambda: {"panic": PANIC},
        "cameras": lambda: {"gate-cam": {"ok": True, "checked": None, "detail": "200"}},
        "outputs": lambda: {"ack_led": {"pattern": "idle"}},
        "commands": lambda: {"accepted": 1, "rejected": 0},
        "warnings": lambda: ["client certificate expires in 9 days"],
        "link_stats": None,
        "photos": lambda: {"pending": 0, "bytes": 0, "dropped": 0},
    }
    return Health(
        site="main",
        device="gate-1",
        clock=clock,
        outbox=outbox,
        sources=StatusSources(**(defaults | sources)),
        test_mode=TestMode(clock),
    )


def test_status__an_outbox_that_cannot_be_read_still_gives_a_valid_status(
    outbox: Outbox, fake_time: FakeTime, validate: Validate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SD-card I/O error in the outbox's status query made every status fail: none was published,
    not even the warning meant for this case, and the uplink's sessions died at their birth status."""
    outbox.put(Event.create(fake_time.clock(), EventType.PANIC, "panic"))
    monkeypatch.setattr(Outbox, "stats", disk_error)
    doc = validate("status", make_health(outbox, fake_time).status())
    assert doc["outbox"] == {"pending": 1, "oldest_age_s": None, "dropped": 0}  # from memory: never a made-up 0
    assert doc["warnings"] == [
        "status incomplete, cannot read: outbox (OperationalError: disk I/O error)",
        "client certificate expires in 9 days",
    ]
    assert doc["inputs"] == {"panic": {"kind": "panic_button", "state": "ok", "last_event": None, "last_test": None}}


class _BrokenTestMode(TestMode):
    __test__ = False

    def until(self) -> str | None:
        disk_error()


def _break(health: Health, monkeypatch: pytest.MonkeyPatch, section: str) -> None:
    if section == "clock":
        health.clock = Clock(wall=health.clock.wall, mono=health.clock.mono, synced=disk_error, boot_id="b")
    elif section == "system":
        monkeypatch.setattr(health_module, "system_vitals", disk_error)
    elif section == "test_mode":
        health.test_mode = _BrokenTestMode(health.clock)
    else:
        setattr(health.sources, section.replace(".", "_"), disk_error)


def _absent(doc: dict[str, Any], key: str) -> bool:
    return key not in doc


EMPTY: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("clock", lambda d: d["clock_synced"] is False),
    ("link", lambda d: d["link"] == {"connected_since": None, "reconnects": 0}),
    ("inputs", lambda d: d["inputs"] == {}),
    ("cameras", lambda d: d["cameras"] == {}),
    ("system", lambda d: d["system"] == {"cpu_temp_c": None, "disk_free_mb": None, "load1": None}),
    ("test_mode", lambda d: d["test_mode_until"] is None),
    ("outputs", lambda d: _absent(d, "outputs")),
    ("commands", lambda d: _absent(d, "commands")),
    ("photos", lambda d: _absent(d, "photos")),
    ("link.stats", lambda d: _absent(d["link"], "stats")),
    ("warnings", lambda d: len(d["warnings"]) == 1),
]


@pytest.mark.parametrize(("section", "is_empty"), EMPTY, ids=[s for s, _ in EMPTY])
def test_status__a_failing_section_is_sent_empty_and_named(
    section: str,
    is_empty: Callable[[dict[str, Any]], object],
    outbox: Outbox,
    fake_time: FakeTime,
    validate: Validate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any section raising took the whole status with it (Health.status contained nothing)."""
    health = make_health(outbox, fake_time)
    _break(health, monkeypatch, section)
    doc = validate("status", health.status())
    assert is_empty(doc)
    assert doc["warnings"][0].startswith(f"status incomplete, cannot read: {section} (OperationalError: ")


def test_status__a_failing_section_is_logged_once(
    outbox: Outbox, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    """A status every heartbeat: the traceback once when it starts failing, a line when it works again."""
    health = make_health(outbox, fake_time, inputs=disk_error)
    with caplog.at_level(logging.INFO, logger="agent.health"):
        health.status()
        health.status()
        health.sources.inputs = lambda: {"panic": PANIC}
        assert health.status()["warnings"] == ["client certificate expires in 9 days"]
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agent.health"]
    assert said == [
        ("ERROR", "status: cannot read inputs; sent empty until it works again"),
        ("INFO", "status: inputs can be read again"),
    ]


@pytest.mark.broker
def test_uplink__a_status_that_cannot_be_built_does_not_end_the_session(
    tmp_path: Path, broker: Broker, central: Central, device: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The uplink built the birth status inside the session: when it raised, every session ended
    after its first round (20 reconnects in 11 s), and the indicators never heard the link come up."""
    links: list[bool] = []
    clock = Clock(synced=lambda: False, boot_id="b")
    with (
        Outbox(tmp_path / "outbox.db", site="main", device=device) as outbox,
        Uplink(
            mqtt_cfg(broker.port, client_id=device),
            topic_root=f"campus/main/{device}",
            outbox=outbox,
            status=disk_error,
            offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
            on_link=lambda state: links.append(state.connected),
        ) as uplink,
    ):
        outbox.put(Event.create(clock, EventType.PANIC, "panic"))
        uplink.start()
        central.wait_events(1)
        eventually(lambda: links == [True], what=lambda: f"the link-up news (got {links})")
        # the status after the SUBACK (commands now available) is the second one that cannot be built
        eventually(lambda: uplink.state().commands_available, what="the command subscription")
        outbox.put(Event.create(clock, EventType.PANIC, "panic"))
        uplink.wake()
        central.wait_events(2)
        assert (uplink.state().reconnects, uplink.state().connected, links) == (0, True, [True])
    said = [r for r in caplog.records if "status document cannot be built" in r.getMessage()]
    assert len(said) == 1, "said once, not at every session or status"


def test_status__a_commit_stuck_in_the_busy_timeout_does_not_hold_the_status(
    tmp_path: Path, fake_time: FakeTime, validate: Validate
) -> None:
    """The status (a heartbeat, `campus-agent status`, doctor) waited as long as the commit: 10 s of SQLite's busy
    timeout, when the outbox is in trouble and the technician asks; it goes with the counts kept in memory."""
    ob = Outbox(tmp_path / "outbox.db", site="main", device="gate-1", busy_timeout_s=5.0)
    ob.put(Event.create(fake_time.clock(), EventType.PANIC, "panic"))
    blocker = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the database: the next commit waits its busy timeout

    def camera_fault() -> None:
        with contextlib.suppress(OutboxError):
            ob.put(Event.create(fake_time.clock(), EventType.CAMERA_FAULT, "cam"))

    stuck = threading.Thread(target=camera_fault, daemon=True)
    try:
        stuck.start()
        eventually(lambda: ob._lock.locked() and stuck.is_alive(), timeout=5, what="the camera fault's commit waits")
        doc = validate("status", make_health(ob, fake_time).status())
        assert stuck.is_alive()  # answered while the commit still waits
        assert doc["outbox"]["pending"] == 1
        assert doc["warnings"][0] == "outbox busy: a commit has held it over 1 s (slow disk, or the database locked)"
        assert not any(w.startswith("status incomplete") for w in doc["warnings"])  # not a read failure
    finally:
        blocker.rollback()
        blocker.close()
        stuck.join(10)
        ob.close()


def test_status__a_cut_warning_says_so_and_doctor_does_not_take_it_for_whole(
    outbox: Outbox, fake_time: FakeTime, validate: Validate, tmp_path: Path
) -> None:
    """Cut at 120 characters just after a ')', "status incomplete" hid the unreadable warnings section (which may hold
    the held-events line), and doctor judged the rest a side matter: WARN instead of FAIL."""
    from agent.config import load_config
    from agent.doctor.checks import Level
    from agent.doctor.running import _judge
    from tests.support.agentproc import write_config

    head = "status incomplete, cannot read: cameras (OSError: "
    text = "x" * (health_module.MAX_DETAIL - len(head) - len("(y)") - 1) + "(y)"

    def cameras() -> NoReturn:
        raise OSError(text)

    doc = validate("status", make_health(outbox, fake_time, cameras=cameras, warnings=disk_error).status())
    first = doc["warnings"][0]
    assert len(first) == health_module.MAX_DETAIL
    assert first.endswith("…")
    level, _ = _judge(first, load_config(write_config(tmp_path, 1883, device="gate-1")))
    assert level is Level.FAIL
