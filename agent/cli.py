"""The ``campus-agent`` command: run the daemon and check a device on the spot.

Exit status: 0 on success, 1 when the agent or a check failed, 2 when the
configuration (or the command line) is wrong.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent import __version__
from agent.control_client import request
from agent.errors import AgentError, ConfigError, ControlError, printable

if TYPE_CHECKING:
    import argparse

    from agent.config.model import Config

# Imported where used, never held here: ``run`` forgets the loader once the config is read (_forget_loader).
_CONFIG = "agent.config"

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def _setup_logging(level: str) -> None:
    # journald stamps each line itself; a terminal gets the time from us.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr, force=True)


ALLOW_ROOT_ENV = "CAMPUS_AGENT_ALLOW_ROOT"


def _load(path: Path) -> Config:
    from agent.config import load_config  # noqa: PLC0415 - see _CONFIG

    return load_config(path)


def _forget_loader() -> None:
    """Forget the config loader (YAML schema and file checks) once ``run`` has its config.

    The daemon never reads its config again; like the parser (_drop_parser),
    the loader's modules would stay in memory for months.  ``agent.config.model``
    stays (the config is made of it) and is found in ``sys.modules`` without its package.
    """
    for name in (_CONFIG, f"{_CONFIG}.schema", f"{_CONFIG}.files"):
        sys.modules.pop(name, None)
    vars(sys.modules["agent"]).pop("config", None)
    gc.collect()


def _root_refusal(args: argparse.Namespace) -> str | None:
    """Why ``run`` will not start as root, or None.

    The agent needs no privilege (GPIO and cameras come through groups), and
    as root it would follow links the service user can plant in its own
    directories.  ``--allow-root`` (or ``CAMPUS_AGENT_ALLOW_ROOT=1``, for test
    rigs and containers that only have root) says it is meant.
    """
    if os.geteuid() != 0 or args.allow_root or os.environ.get(ALLOW_ROOT_ENV) == "1":
        return None
    return (
        "refusing to run as root: the agent needs no privileges, and as root it would follow files the "
        "service user can plant; start it as its own user (systemctl start campus-agent), or pass "
        "--allow-root for a lab bench"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent  # noqa: PLC0415 - keeps check-config and status light

    os.umask(0o077)  # the outbox, its state file and anything else written stay private, also when run by hand
    refusal = _root_refusal(args)
    if refusal is not None:
        print(f"campus-agent: {refusal}", file=sys.stderr)
        return EXIT_CONFIG
    cfg = _load(args.config)
    _forget_loader()
    _setup_logging(args.log_level or cfg.log_level)
    if cfg.mqtt.allow_plaintext_password:
        logging.getLogger("agent").warning("%s", cfg.warnings[0])
    return Agent(cfg).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    print(
        f"{cfg.source}: OK: device {cfg.device.site}/{cfg.device.id}, {len(cfg.inputs)} inputs, "
        f"{len(cfg.cameras)} cameras, broker {', '.join(str(b) for b in cfg.mqtt.brokers)}"
    )
    for warning in cfg.warnings:
        print(f"{cfg.source}: WARNING: {warning}")
    return EXIT_OK


def _ask(args: argparse.Namespace, cmd: str, *, unsure: str = "", **fields: Any) -> dict[str, Any]:
    """One request to the running agent; ``unsure`` says how to check a change that got no answer."""
    # Only control.socket: a technician in the control group may not read the secrets (docs/install.md).
    from agent.config import load_control_socket  # noqa: PLC0415 - see _CONFIG

    return request(load_control_socket(args.config), cmd, unsure=unsure, **fields)


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(args, "status")
    if args.json:
        print(json.dumps({k: v for k, v in reply.items() if k != "ok"}, indent=2))
        return EXIT_OK
    print(format_status(reply))
    return EXIT_OK


def format_status(reply: dict[str, Any]) -> str:
    st, link = reply["status"], reply["link"]
    clock = "synchronised" if st["clock_synced"] else "NOT synchronised"
    agent = st["agent"]
    lines = [f"device   {st['site']}/{st['device']}  agent {agent['version']}  up {agent['uptime_s']} s  clock {clock}"]
    if link["connected"]:
        sl = st["link"]
        proto = f" MQTT {sl['protocol']}" if sl.get("protocol") else ""
        lines.append(
            f"link     connected to {link['broker']}{proto} since {sl['connected_since']}"
            f" ({sl['reconnects']} reconnects){'' if sl.get('retain', True) else ', retain unavailable'}"
        )
        cmds = sl.get("commands") or {}
        if cmds.get("available") is False:
            lines.append(f"link     commands unavailable: {cmds.get('reason')}")
    else:
        lines.append(f"link     DISCONNECTED: {link['last_error'] or 'connecting'}")
    lines.extend(_stats_lines(st["link"].get("stats")))
    ob = st["outbox"]
    age = f", oldest {ob['oldest_age_s']:.0f} s" if ob["oldest_age_s"] is not None else ""
    lines.append(
        f"outbox   {ob['pending']} pending{age}, {ob['dropped']} dropped" + (", DISK LOW" if ob.get("disk_low") else "")
    )
    for name, i in st["inputs"].items():
        lines.append(
            f"input    {name:<12} {i['kind']:<13} {i['state']:<7} last event {i['last_event'] or '-'}"
            f"  last test {i['last_test'] or '-'}"
        )
    for name, c in st.get("cameras", {}).items():
        lines.append(f"camera   {name:<12} {_camera_verdict(c.get('ok')):<7} {c.get('detail', '')}")
    for name, o in st.get("outputs", {}).items():
        lines.append(f"output   {name:<12} {o.get('pattern', '-')}")
    photos = st.get("photos")
    if photos:
        kib = photos["bytes"] // 1024
        lines.append(f"photos   {photos['pending']} waiting ({kib} KiB), {photos['dropped']} dropped")
        if photos.get("error"):
            lines.append(f"photos   STORE UNUSABLE: {photos['error']}")
    if st.get("test_mode_until"):
        lines.append(f"test     test mode on until {st['test_mode_until']}")
    lines.extend(f"WARNING  {w}" for w in st.get("warnings", []))
    lines.extend(
        f"event    seq {ev['seq']} {ev['type']:<15} {ev['source']:<12} {ev['ts']}"
        f"{' test' if ev['test'] else ''} {'delivered' if ev['delivered'] else 'pending'}"
        for ev in reply.get("recent_events", [])[:10]
    )
    return "\n".join(printable(line) for line in lines)  # camera details, broker errors: quoted from outside


def _camera_verdict(ok: object) -> str:
    """A camera's ``ok`` in words: ``null`` (no verdict yet: fewer than ``fail_after`` failed probes) is no fault."""
    if ok is True:
        return "ok"
    return "FAULT" if ok is False else "no verdict yet"


def _stats_lines(stats: dict[str, Any] | None) -> list[str]:
    """Transmission times per broker path and availability, each with the period it covers."""
    if not stats:
        return []
    out = []
    for broker, periods in stats.get("transmit", {}).items():
        parts = [
            f"{name} n={p['count']} mean {p['mean_ms']} ms p95 {p['p95_ms']} ms max {p['max_ms']} ms"
            for name, p in periods.items()
            if p.get("count")
        ]
        out.append(f"sent     via {broker}: {'; '.join(parts) or 'nothing yet'}")
    av = [
        f"{name} {a['percent']} % ({a['outages']} outages, longest {a['longest_outage_s']} s)"
        for name, a in stats.get("availability", {}).items()
        if a.get("percent") is not None
    ]
    if av:
        out.append(f"link up  {'; '.join(av)}")
    return out


def cmd_simulate(args: argparse.Namespace) -> int:
    unsure = f"check with `campus-agent status` (the line of input {args.input})"
    reply = _ask(args, "simulate", unsure=unsure, input=args.input, action=args.action)
    print(f"{reply['action']}ed {reply['input']}" if reply["action"] == "press" else f"released {reply['input']}")
    return EXIT_OK


def cmd_test_mode(args: argparse.Namespace) -> int:
    minutes = 0 if args.state == "off" else args.minutes
    unsure = "check with `campus-agent status`: its 'test' line shows test mode on, no such line shows it off" + (
        "; end it with `campus-agent test-mode off` if need be" if minutes else ""
    )
    reply = _ask(args, "test_mode", unsure=unsure, minutes=minutes)
    until = reply["test_mode_until"]
    print(f"test mode on until {until}: presses are sent with test: true" if until else "test mode off")
    return EXIT_OK


def _minutes(text: str) -> int:
    """``test-mode --minutes``: 1 up to the limit the agent itself enforces (``commands.MAX_MINUTES``)."""
    import argparse  # noqa: PLC0415 - loaded already: this runs while the command line is parsed

    from agent.cmdparse import MAX_MINUTES  # noqa: PLC0415 - only a test-mode command line pays for it

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of minutes, got {text!r}") from None
    if not 1 <= value <= MAX_MINUTES:
        raise argparse.ArgumentTypeError(f"expected 1-{MAX_MINUTES} minutes, got {value}")
    return value


_DEVICE_COMMANDS = frozenset({"run", "check-config", "status", "simulate", "test-mode"})


def build_parser(*, tools: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``tools=False`` leaves out doctor, monitor and ack.

    Those import paho and more; ``campus-agent run`` never needs them, and not
    importing them keeps the daemon's memory near a bare interpreter's.
    """
    import argparse  # noqa: PLC0415 - the daemon drops it again after parsing (see _drop_parser)

    from agent.config import DEFAULT_PATH  # noqa: PLC0415 - see _CONFIG

    p = argparse.ArgumentParser(prog="campus-agent", description="Campus panic-button and camera-health edge agent.")
    p.add_argument("--version", action="version", version=f"campus-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
        return sp

    run = with_config(sub.add_parser("run", help="run the agent in the foreground (what systemd runs)"))
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.add_argument(
        "--allow-root", action="store_true", help=f"run even as root (refused otherwise; or set {ALLOW_ROOT_ENV}=1)"
    )
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a config file; exit 0 or 2")
    chk.add_argument("file", type=Path)
    chk.set_defaults(func=cmd_check_config)

    st = with_config(sub.add_parser("status", help="link, outbox, inputs and recent events of the running agent"))
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

    sim = with_config(sub.add_parser("simulate", help="press or release a simulated input (pin_factory: mock)"))
    sim.add_argument("action", choices=("press", "release"))
    sim.add_argument("input", help="input name from the config")
    sim.set_defaults(func=cmd_simulate)

    tm = with_config(sub.add_parser("test-mode", help="send presses as tests for a while (technician patrol)"))
    tm.add_argument("state", choices=("on", "off"))
    tm.add_argument("--minutes", type=_minutes, default=30, metavar="N", help="how long, in minutes (default 30)")
    tm.set_defaults(func=cmd_test_mode)

    if tools:
        from agent.central.monitor import add_monitor_parsers  # noqa: PLC0415
        from agent.doctor.runner import add_doctor_parser  # noqa: PLC0415 - see the docstring

        add_monitor_parsers(sub)
        add_doctor_parser(sub)
    return p


def _drop_parser(args: argparse.Namespace) -> argparse.Namespace:
    """The options as plain values, with ``argparse`` (and the ``gettext`` it imports) forgotten.

    The daemon runs for months and never parses a command line again; the
    parser's modules are about 0.4 MB of its memory against a bare interpreter
    (bench: RSS), and the memory freed here is reused by what the daemon builds next.
    """
    plain = types.SimpleNamespace(**vars(args))
    for name in ("argparse", "gettext"):
        sys.modules.pop(name, None)
    gc.collect()  # the modules' classes and functions refer to each other: only the collector frees them
    return cast("argparse.Namespace", plain)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(tools=not words or words[0] not in _DEVICE_COMMANDS).parse_args(words)
    if args.func is cmd_run:
        args = _drop_parser(args)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except ControlError as exc:
        print(f"campus-agent: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except AgentError as exc:
        print(f"campus-agent: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
