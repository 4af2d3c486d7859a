"""Fixtures of the fault suite, and the table printed at the end of the session.

Every server or process started here binds 127.0.0.1 (or a UNIX socket) and
is stopped in the fixture's teardown, whatever the test did.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import REPORT, SEED, SOAK, MakeAgent, MakeBroker
from tests.support.agentproc import AgentProc, write_config
from tests.support.broker import Broker
from tests.support.faultproxy import FaultProxy

SOAK_TABLE = Path(__file__).with_name("last-soak.txt")


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[MakeBroker]:
    """Factory: brokers(persistence=False) -> a started mosquitto of this test only."""
    made: list[Broker] = []

    def make(*, persistence: bool = False) -> Broker:
        b = Broker(tmp_path / f"broker{len(made)}", persistence=persistence).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def proxies() -> Iterator[Callable[[int], FaultProxy]]:
    """Factory: proxies(upstream_port) -> a started FaultProxy on 127.0.0.1."""
    made: list[FaultProxy] = []

    def make(port: int) -> FaultProxy:
        p = FaultProxy(port).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[MakeAgent]:
    """Factory: agents(port, device, env=None, start=True, **config) -> AgentProc, killed after the test."""
    made: list[AgentProc] = []

    def make(
        port: int, device: str, *, env: dict[str, str] | None = None, start: bool = True, **extra: Any
    ) -> AgentProc:
        cfg = write_config(tmp_path / device, port, device=device, **extra)
        a = AgentProc(cfg, env=env)
        made.append(a)
        return a.start() if start else a

    yield make
    for a in made:
        a.cleanup()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.when == "call" or (rep.when == "setup" and rep.outcome != "passed"):
        first = item.stash.get(_FIRST_ROW, None)
        if first is not None:
            for row in REPORT.rows[first:]:
                row.outcome = "xfail" if hasattr(rep, "wasxfail") else rep.outcome
    return rep


_FIRST_ROW = pytest.StashKey[int]()


@pytest.fixture(autouse=True)
def _mark_rows(request: pytest.FixtureRequest) -> None:
    request.node.stash[_FIRST_ROW] = len(REPORT.rows)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT.rows:
        return
    title = f"fault scenarios ({'full counts, SOAK=1' if SOAK else 'short counts'}; SEED={SEED})"
    table = REPORT.table()
    terminalreporter.write_sep("=", title)
    for line in table.splitlines():
        terminalreporter.write_line(line)
    if SOAK:
        SOAK_TABLE.write_text(f"{title}\n{table}\n")
        terminalreporter.write_line(f"(table written to {SOAK_TABLE})")
