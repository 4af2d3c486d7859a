"""Fixtures for the interop suite: one broker target per parameter, the agent as a real process.

Brokers are session-scoped (a RabbitMQ node takes 5-10 s to boot), tests keep
apart by unique device ids.  A broker that cannot run here is skipped with the
reason, except that under CI mosquitto and amqtt must run (they are installed
by ``make test``).  Figures measured by the tests are printed at the end and,
under ``make interop`` (INTEROP_FULL=1), written to last-interop.txt.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.interop import targets
from tests.interop.targets import Target
from tests.support import amqtt as amqtt_support
from tests.support import rabbitmq as rabbit_support
from tests.support.agentproc import AgentProc, unique_id, write_config

# what a JSON document validated against a contract schema is (the ``validate`` fixture of tests/conftest.py)
Validate = Callable[[str, dict[str, Any]], dict[str, Any]]


class RunAgent(Protocol):
    """The ``run_agent`` fixture: a started agent with the target's config (``ports`` overrides its brokers)."""

    def __call__(
        self, target: Target, *, ports: list[int] | None = None, device: str | None = None, **extra: Any
    ) -> AgentProc: ...


FULL = os.environ.get("INTEROP_FULL") == "1" or os.environ.get("SOAK") == "1"
FIGURES: list[str] = []
FIGURES_FILE = Path(__file__).with_name("last-interop.txt")

# the single-broker targets every scenario runs against
TARGETS = ["mosquitto-v5", "mosquitto-v311", "mosquitto-auto", "amqtt", "rabbitmq"]
# (test, target) pairs only make interop runs: the forced-protocol outages take the same path as
# mosquitto-auto's on the agent side, and make test keeps its interop part near two minutes
FULL_ONLY = {
    ("test_presses_during_outage_all_delivered_in_order", "mosquitto-v5"),
    ("test_presses_during_outage_all_delivered_in_order", "mosquitto-v311"),
}


def full_only() -> tuple[pytest.MarkDecorator, ...]:
    return (
        pytest.mark.slow,
        pytest.mark.skipif(not FULL, reason="long interop run: make interop (INTEROP_FULL=1) or make soak"),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interop: black-box run against a broker nobody here wrote")


# Agent bugs these runs found, per target, until the agent is fixed: strict, so a fix makes the run
# fail with XPASS and this entry must go.  Only the scenarios with the agent (not the broker probes);
# run under make interop only.
KNOWN_AGENT_BUGS: dict[str, str] = {}  # target -> why its agent scenarios are expected to fail (strict xfail)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("target") if callspec is not None else None
        if (getattr(item, "originalname", None), name) in FULL_ONLY:
            for mark in full_only():
                item.add_marker(mark)
        if name in KNOWN_AGENT_BUGS and "run_agent" in getattr(item, "fixturenames", ()):
            # make test does not spend 30 s per scenario waiting for it; make interop runs them (strict)
            item.add_marker(
                pytest.mark.xfail(reason=KNOWN_AGENT_BUGS[name], strict=True, raises=AssertionError, run=FULL)
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("interop figures")
    for line in FIGURES:
        terminalreporter.write_line(line)
    if FULL:
        FIGURES_FILE.write_text("\n".join(FIGURES) + "\n")


def _need(reason: str | None, *, required_in_ci: bool) -> None:
    if reason is None:
        return
    if required_in_ci and os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this broker)")
    pytest.skip(reason)


def make_target(name: str, workdir: Path) -> Target:
    if name.startswith("mosquitto-"):
        return targets.mosquitto(workdir, name.removeprefix("mosquitto-"))
    if name == "amqtt":
        _need(amqtt_support.unavailable(), required_in_ci=True)
        return targets.amqtt(workdir)
    if name.startswith("rabbitmq"):
        _need(rabbit_support.unavailable(), required_in_ci=False)
        return targets.rabbitmq(workdir, size=2 if "cluster" in name else 1)
    raise ValueError(name)


@pytest.fixture(scope="session", params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    t = make_target(request.param, tmp_path_factory.mktemp(request.param))
    yield t
    t.close()


@pytest.fixture
def live_target(target: Target) -> Target:
    target.ensure_running()
    return target


@pytest.fixture
def run_agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunAgent]:
    """Factory: run_agent(target, ports=None, **config) → a started agent with the target's config."""
    procs: list[tuple[AgentProc, Target]] = []

    def make(target: Target, *, ports: list[int] | None = None, device: str | None = None, **extra: Any) -> AgentProc:
        device = device or unique_id("gate")
        workdir = tmp_path / device
        cfg = target.agent_config(workdir, ports)
        mqtt = {**cfg["mqtt"], **extra.pop("mqtt", {})}
        path = write_config(workdir, target.port, device=device, mqtt=mqtt, **extra)
        p = AgentProc(path)
        procs.append((p, target))
        return p.start()

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for p, t in procs:
        if failed:  # printed into the captured output of the failing test
            log = p.log.read_text(errors="replace").splitlines() if p.log.exists() else []
            print(f"--- agent log {p.log} (last 60 lines) ---\n" + "\n".join(log[-60:]))
            print(t.logs())
        p.cleanup()
