"""The press loop shared by every in-process wrapper: drive a mock pin on a schedule, stamping each press.

Standard library only, so the peer's wrapper can use it from the peer's own
virtual environment.  The stamp is ``time.monotonic_ns()`` (CLOCK_MONOTONIC,
shared by every process on the machine) taken just before the pin is driven;
the subscriber stamps arrivals on the same clock, so arrival minus stamp is
press → delivery.  The driving thread plays gpiozero's own callback thread:
a mock pin calls its handlers synchronously in the thread that drives it.
:func:`connected_agent` starts the real agent in the calling process (it
imports the agent only when called).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def press_loop(
    press: Callable[[], None], release: Callable[[], None], *, count: int, gap_ms: float, hold_ms: float
) -> list[int]:
    """Press ``count`` times ``gap_ms`` apart, releasing ``hold_ms`` after each press; return the stamps (ns)."""
    stamps: list[int] = []
    gap = gap_ms / 1000.0
    start = time.monotonic() + 0.05
    for i in range(count):
        delay = start + i * gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.monotonic_ns()
        press()
        stamps.append(t)
        time.sleep(hold_ms / 1000.0)
        release()
    return stamps


def rss_mb() -> float:
    """This process's resident set size now (MB)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)


@contextlib.contextmanager
def connected_agent(config: Path, *, settle_s: float = 0.5, timeout_s: float = 20.0) -> Iterator[Any]:
    """The real :class:`agent.daemon.Agent` in this process, started and connected to its broker; stopped on exit.

    Logs at INFO to stderr as ``campus-agent run`` does (unless logging is set
    up already).  ``settle_s`` after connecting lets ``agent_started``, the
    birth status and a camera's first probe get out of the way of the first press.

    Raises:
        RuntimeError: the agent did not connect within ``timeout_s``.

    """
    from agent.config import load_config  # noqa: PLC0415 - the peer's wrapper imports this module too
    from agent.daemon import Agent  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    agent = Agent(load_config(config))
    agent.start()
    try:
        assert agent.uplink is not None
        deadline = time.monotonic() + timeout_s
        while not agent.uplink.state().connected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not connect within {timeout_s:g} s")
            time.sleep(0.02)
        time.sleep(settle_s)
        yield agent
    finally:
        agent.stop()


def panic_pin(agent: Any) -> Any:
    """The mock pin of the input named ``panic`` (normally open: pressed = low)."""
    return agent.inputs._inputs["panic"].button.pin
