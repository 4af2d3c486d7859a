"""The ``campus-agent`` command: run the daemon and check a device on the spot.

Exit status: 0 on success, 1 when the agent or a check failed, 2 when the
configuration (or the command line) is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import DEFAULT_PATH, Config, load_config
from agent.control import request
from agent.errors import AgentError, ConfigError, ControlError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def _setup_logging(level: str) -> None:
    # journald stamps each line itself; a terminal gets the time from us.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr, force=True)


def _load(path: Path) -> Config:
    return load_config(path)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent  # noqa: PLC0415 - keeps check-config and status light

    cfg = _load(args.config)
    _setup_logging(args.log_level or cfg.log_level)
    return Agent(cfg).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    print(f"{cfg.source}: OK: device {cfg.device.site}/{cfg.device.id}, {len(cfg.inputs)} inputs, "
          f"{len(cfg.cameras)} cameras, broker {', '.join(str(b) for b in cfg.mqtt.brokers)}")
    return EXIT_OK


def _ask(args: argparse.Namespace, cmd: str, **fields: Any) -> dict[str, Any]:
    cfg = _load(args.config)
    return request(cfg.control.socket, cmd, **fields)


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
        lines.append(f"link     connected to {link['broker']}{proto} since {sl['connected_since']}"
                     f" ({sl['reconnects']} reconnects){'' if sl.get('retain', True) else ', retain unavailable'}")
        cmds = sl.get("commands") or {}
        if cmds.get("available") is False:
            lines.append(f"link     commands unavailable: {cmds.get('reason')}")
    else:
        lines.append(f"link     DISCONNECTED: {link['last_error'] or 'connecting'}")
    ob = st["outbox"]
    age = f", oldest {ob['oldest_age_s']:.0f} s" if ob["oldest_age_s"] is not None else ""
    lines.append(f"outbox   {ob['pending']} pending{age}, {ob['dropped']} dropped"
                 + (", DISK LOW" if ob.get("disk_low") else ""))
    for name, i in st["inputs"].items():
        lines.append(f"input    {name:<12} {i['kind']:<13} {i['state']:<7} last event {i['last_event'] or '-'}"
                     f"  last test {i['last_test'] or '-'}")
    for name, c in st.get("cameras", {}).items():
        lines.append(f"camera   {name:<12} {'ok' if c.get('ok') else 'FAULT':<7} {c.get('detail', '')}")
    for name, o in st.get("outputs", {}).items():
        lines.append(f"output   {name:<12} {o.get('pattern', '-')}")
    if st.get("test_mode_until"):
        lines.append(f"test     test mode on until {st['test_mode_until']}")
    lines.extend(f"WARNING  {w}" for w in st.get("warnings", []))
    lines.extend(
        f"event    seq {ev['seq']} {ev['type']:<15} {ev['source']:<12} {ev['ts']}"
        f"{' test' if ev['test'] else ''} {'delivered' if ev['delivered'] else 'pending'}"
        for ev in reply.get("recent_events", [])[:10]
    )
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    reply = _ask(args, "simulate", input=args.input, action=args.action)
    print(f"{reply['action']}ed {reply['input']}" if reply["action"] == "press" else f"released {reply['input']}")
    return EXIT_OK


def cmd_test_mode(args: argparse.Namespace) -> int:
    minutes = 0 if args.state == "off" else args.minutes
    reply = _ask(args, "test_mode", minutes=minutes)
    until = reply["test_mode_until"]
    print(f"test mode on until {until}: presses are sent with test: true" if until else "test mode off")
    return EXIT_OK


_DEVICE_COMMANDS = frozenset({"run", "check-config", "status", "simulate", "test-mode"})


def build_parser(*, tools: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``tools=False`` leaves out doctor, monitor and ack.

    Those import paho and more; ``campus-agent run`` never needs them, and not
    importing them keeps the daemon's memory near a bare interpreter's.
    """
    p = argparse.ArgumentParser(prog="campus-agent", description="Campus panic-button and camera-health edge agent.")
    p.add_argument("--version", action="version", version=f"campus-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
        return sp

    run = with_config(sub.add_parser("run", help="run the agent in the foreground (what systemd runs)"))
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
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
    tm.add_argument("--minutes", type=int, default=30, choices=range(1, 241), metavar="N",
                    help="how long, 1-240 (default 30)")
    tm.set_defaults(func=cmd_test_mode)

    if tools:
        from agent.central.monitor import add_monitor_parsers  # noqa: PLC0415
        from agent.doctor.runner import add_doctor_parser  # noqa: PLC0415 - see the docstring

        add_monitor_parsers(sub)
        add_doctor_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(tools=not words or words[0] not in _DEVICE_COMMANDS).parse_args(words)
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
