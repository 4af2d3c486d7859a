"""``campus-agent doctor``: one command a technician runs at install and on patrol.

Each check prints one line the moment it is known (the technician is
watching), as ``OK | WARN | FAIL  what  → what to do``.  The exit status is 1
when any line is FAIL, else 0.  A config that does not load is reported line
by line and nothing else is checked: every later check depends on it.

Doctor looks, it does not disturb: when the agent is running (its control
socket answers) the pins are left to it and its own status is reported
instead; the outbox database is never opened; the broker is reached with a
client id of its own, so the running agent keeps its connection.  Secrets are
never printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

from agent.config import DEFAULT_PATH, Config, load_config
from agent.control_client import request
from agent.doctor.broker import check_broker
from agent.doctor.checks import (
    Check,
    Level,
    check_camera,
    check_clock,
    check_config_error,
    check_config_ok,
    check_outbox_folder,
    check_pins,
    check_systemd,
    split_hint,
    utc_now,
)
from agent.doctor.running import check_held_pins, check_running_agent
from agent.doctor.tls import check_client_cert
from agent.errors import ConfigError, ControlError, HardwareError
from agent.events import kernel_clock_synced
from agent.pins import close_pin_factory, make_pin_factory

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0
_CONTROL_TIMEOUT_S = 2.0
_MIN_SECRET = 4  # characters; shorter values would blank out ordinary words


@dataclass(frozen=True)
class Host:
    """What doctor asks of the machine itself; tests pass fakes."""

    clock_synced: Callable[[], bool] = kernel_clock_synced
    systemctl: str | None = field(default_factory=lambda: shutil.which("systemctl"))
    pid1_comm: Path = Path("/proc/1/comm")
    now: Callable[[], dt.datetime] = utc_now


# ---- the running agent -------------------------------------------------------------


@dataclass(frozen=True)
class AgentProbe:
    """What the control socket said: a status ``reply``, nothing (not running), or a ``problem``.

    ``denied``: the socket is there but this user may not use it, so the agent
    may well be fine; doctor cannot tell.
    """

    reply: dict[str, Any] | None = None
    problem: str | None = None
    denied: bool = False


def _listening(path: Path) -> bool:
    """True when something is there that we cannot use, False when there is no agent at all."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(_CONTROL_TIMEOUT_S)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return False  # no socket, or a stale one left by a killed agent
        except OSError:
            return True  # permission denied or a stuck backlog: an agent may hold the pins
        return True


def probe_agent(path: Path, timeout_s: float = _CONTROL_TIMEOUT_S) -> AgentProbe:
    """Ask the agent behind ``path`` for its status, and tell "not running" from "not answering"."""
    try:
        return AgentProbe(reply=request(path, "status", timeout=timeout_s))
    except ControlError as exc:
        if not _listening(path):
            return AgentProbe()
        denied = not os.access(path, os.R_OK | os.W_OK, effective_ids=True)
        return AgentProbe(problem=str(exc), denied=denied)


# ---- the run -------------------------------------------------------------------------


def _gpio(cfg: Config, agent: AgentProbe) -> list[Check]:
    if agent.reply is not None:
        return check_held_pins(agent.reply, cfg)
    if agent.problem is not None:
        return [
            Check.warn(
                "GPIO pins not checked: the agent may hold them", "see the agent line above, then run doctor again"
            )
        ]
    try:
        factory = make_pin_factory(cfg.gpio.pin_factory)
    except HardwareError as exc:
        what, todo = split_hint(str(exc))
        return [Check.fail(what, todo or "check gpio.pin_factory")]
    try:
        return check_pins(cfg, factory)
    finally:
        close_pin_factory(factory)


def _agent(cfg: Config, agent: AgentProbe) -> list[Check]:
    if agent.reply is not None:
        return check_running_agent(agent.reply, cfg)
    if agent.denied:
        return [
            Check.warn(
                f"cannot ask the agent on {cfg.control.socket}: no permission",
                "run doctor with sudo (it reads the secrets too); for campus-agent status without sudo: "
                "usermod -aG campus-agent-ctl <user>",
            )
        ]
    if agent.problem is not None:
        return [
            Check.fail(
                f"agent on {cfg.control.socket} does not answer: {agent.problem}",
                "restart it: systemctl restart campus-agent",
            )
        ]
    # OK: on a bench doctor may well run first; under systemd the service line below judges it.
    return [Check.ok(f"agent not running (nothing on {cfg.control.socket}): doctor checks the GPIO pins itself")]


Step = Callable[[], Iterable[Check]]


def checks(cfg: Config, timeout_s: float, host: Host) -> Iterator[Check]:
    """Every check after the config, in the order a technician reads them.

    A check that crashes (a bug, or a machine nobody foresaw) becomes one FAIL
    line and the others still run: a half report at a gate helps nobody.
    """
    agent = probe_agent(cfg.control.socket, min(timeout_s, _CONTROL_TIMEOUT_S))
    steps: list[tuple[str, Step]] = [
        ("agent", partial(_agent, cfg, agent)),
        ("GPIO", partial(_gpio, cfg, agent)),
        ("outbox", partial(check_outbox_folder, cfg.outbox)),
        ("clock", lambda: [check_clock(host.clock_synced())]),
        ("client certificate", lambda: check_client_cert(cfg.mqtt, host.now())),
    ]
    steps += [(f"broker {b}", partial(check_broker, cfg, b, timeout_s, host.now())) for b in cfg.mqtt.brokers]
    steps += [(f"camera {c.name}", partial(_one, check_camera, c)) for c in cfg.cameras]
    listens = agent.reply is not None or agent.problem is not None  # a socket there: started, or starting
    steps.append(("systemd", lambda: [check_systemd(host.systemctl, host.pid1_comm, agent_listens=listens)]))
    for name, step in steps:
        try:
            yield from step()
        except Exception as exc:  # reported as a line; the remaining checks still run
            yield Check.fail(
                f"{name} check crashed: {type(exc).__name__}: {exc}",
                "report it as a doctor bug; the other checks still ran",
            )


def _one(check: Callable[[T], Check], arg: T) -> list[Check]:
    return [check(arg)]


class _Printer:
    """Prints verdicts as they come, with secrets blanked, and counts them."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._secrets: list[str] = []
        self.counts = dict.fromkeys(Level, 0)
        encoding = getattr(out, "encoding", None) or "utf-8"
        self._encoding = encoding
        self._arrow = "→" if self._encodable("→") else "->"

    def _encodable(self, text: str) -> bool:
        try:
            text.encode(self._encoding)
        except (UnicodeEncodeError, LookupError):
            return False
        return True

    def hide(self, *secrets: str | None) -> None:
        self._secrets += [s for s in secrets if s is not None and len(s) >= _MIN_SECRET]

    def show(self, check: Check) -> None:
        self.counts[check.level] += 1
        self._write(check.line(self._arrow))

    def _write(self, line: str) -> None:
        for secret in self._secrets:
            line = line.replace(secret, "********")
        if not self._encodable(line):  # a latin-1 terminal must not crash the report
            line = line.encode(self._encoding, errors="replace").decode(self._encoding)
        self._out.write(line + "\n")
        self._out.flush()

    def finish(self) -> int:
        c = self.counts
        self._write(f"doctor: {c[Level.OK]} OK, {c[Level.WARN]} WARN, {c[Level.FAIL]} FAIL")
        return 1 if c[Level.FAIL] else 0


def run_doctor(
    config: Path | str, *, timeout_s: float = DEFAULT_TIMEOUT_S, out: TextIO | None = None, host: Host | None = None
) -> int:
    """Run every check against the config at ``config`` and print one line per verdict.

    Args:
        config: the agent's YAML file.
        timeout_s: the limit for each network step (DNS, TCP, TLS, CONNACK, round trip), in seconds.
        out: where the lines go (default stdout), flushed after each line.
        host: the machine's clock, systemd and time; fakes in tests.

    Returns:
        1 when any check FAILed, else 0.

    """
    printer = _Printer(out or sys.stdout)
    host = host or Host()
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        for check in check_config_error(exc):
            printer.show(check)
        return printer.finish()
    printer.hide(*(s.reveal() if s else None for s in (cfg.mqtt.password, *(c.password for c in cfg.cameras))))
    printer.show(check_config_ok(cfg))
    for check in checks(cfg, timeout_s, host):
        printer.show(check)
    return printer.finish()


# ---- the command line ------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"expected 0 < seconds <= 300, got {text}")
    return value


def cmd_doctor(args: argparse.Namespace) -> int:
    return run_doctor(args.config, timeout_s=args.timeout)


def add_doctor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``doctor`` on the CLI's subparsers (``sub`` is what ``add_subparsers`` returned)."""
    p = sub.add_parser(
        "doctor",
        help="check this device end to end: config, pins, outbox, clock, broker, cameras",
        description="One line per check: OK | WARN | FAIL  what  → what to do.  Exit status 1 when any check FAILs.",
    )
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"limit for each network step (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.set_defaults(func=cmd_doctor)
