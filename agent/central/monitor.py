"""``campus-agent monitor`` and ``campus-agent ack``: watch the fleet, acknowledge alarms.

For technicians at a gate and operators at the centre.  ``monitor`` prints
each event once as it arrives, and every few seconds a board: a header line
with the counts, the devices that need attention and every unacknowledged
alarm (``--table``: every device, problem first).  Plain text, fine in a pipe
or a log file; ``--json`` for scripts.  With ``--ack`` it sends the contract's
``ack`` for the newest real alarm when Enter is pressed (a test press only
when no real alarm waits).  ``ack`` sends one ack and
waits for the device's reply.

Where to connect: ``--broker HOST:PORT`` with the options a technician knows
from ``mosquitto_sub`` (``--protocol``, ``--cafile``, ``--cert``, ``--key``,
``--username``, ``--password-file``; no ``--insecure``), or the ``mqtt``
section of an agent config (``-c FILE``).  Both: the config's settings, each
overridden by the flag given.  Neither: the default config, if it exists.
A password is never sent without TLS.  With a device's own credentials the
broker's ACL may hide the rest of the fleet.

Exit status: 0 ok; 1 broker unreachable, ack refused or unanswered; 2 bad
arguments, or a config problem raised as :class:`~agent.errors.ConfigError`.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.central.acks import valid_event_id
from agent.central.display import MAX_REASON, escape, valid_id
from agent.central.session import (
    EXIT_FAIL,
    EXIT_OK,
    TABLE_EVERY_S,
    MonitorOptions,
    Target,
    run_monitor,
    send_ack,
    subscriptions,
)
from agent.central.settings import DEFAULT_CONNECT_TIMEOUT_S, PROTOCOLS, LinkSettings
from agent.config import DEFAULT_PATH, BrokerAddress, load_config
from agent.config.model import Secret, TlsConfig
from agent.errors import AgentError, ConfigError

__all__ = [
    "MonitorOptions",
    "Target",
    "add_monitor_parsers",
    "broker_address",
    "resolve_target",
    "run_monitor",
    "subscriptions",
]
ONCE_S = 1.0


@dataclass(frozen=True)
class BrokerFlags:
    """The ``mosquitto_sub``-like options; ``None`` means "from the config, else the default"."""

    protocol: str | None = None
    cafile: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password_file: Path | None = None


def resolve_target(
    broker: BrokerAddress | None,
    config: Path | None,
    prefix: str | None,
    flags: BrokerFlags | None = None,
    *,
    default_config: Path = DEFAULT_PATH,
) -> Target:
    """Combine ``--broker``, ``-c``, ``--prefix`` and the broker flags into a :class:`Target`.

    Raises:
        ConfigError: neither a broker nor a readable config was given, the
            config is invalid, a key or password file is readable by others,
            or a password would go out without TLS.

    """
    f = flags or BrokerFlags()
    path = config
    if path is None and broker is None:
        if not default_config.exists():
            raise ConfigError(
                f"no broker given: pass --broker HOST:PORT (e.g. --broker broker.campus.lan:8883 --cafile ca.crt), "
                f"or -c FILE, an agent config whose mqtt section names the broker, TLS and credentials "
                f"({default_config} does not exist)"
            )
        path = default_config
    mqtt = load_config(path).mqtt if path is not None else None
    brokers = (broker,) if broker is not None else mqtt.brokers if mqtt is not None else ()
    timeout = mqtt.connect_timeout_s if mqtt is not None else DEFAULT_CONNECT_TIMEOUT_S
    tls = mqtt.tls if mqtt is not None else None
    if f.cafile is not None or f.cert is not None:
        if (f.cert is None) != (f.key is None):
            raise ConfigError("--cert and --key go together: give both, or neither")
        base = tls or TlsConfig(ca_file=None, cert_file=None, key_file=None, check_hostname=True)
        tls = TlsConfig(
            ca_file=f.cafile or base.ca_file,
            cert_file=f.cert or base.cert_file,
            key_file=f.key or base.key_file,
            check_hostname=base.check_hostname,
        )
    elif f.key is not None:
        raise ConfigError("--key goes with --cert: give both, or neither")
    if f.key is not None:
        _private(f.key, "--key")
    username = f.username or (mqtt.username if mqtt is not None else None)
    password = mqtt.password if mqtt is not None else None
    if f.password_file is not None:
        password = Secret(_private(f.password_file, "--password-file").read_text().rstrip("\r\n"), f.password_file)
        if tls is None:
            raise ConfigError(
                f"--password-file {f.password_file}: a password without TLS crosses the network in "
                "clear; add --cafile CA_FILE (the broker's CA) and its TLS port"
            )
    protocol = f.protocol or _config_protocol(mqtt.protocol if mqtt is not None else None)
    settings = LinkSettings(brokers, timeout, protocol=protocol, tls=tls, username=username, password=password)
    return Target(settings, prefix or (mqtt.topic_prefix if mqtt else "campus"))


def _config_protocol(value: str | None) -> str:
    return value if value in PROTOCOLS else "auto"


def _private(path: Path, flag: str) -> Path:
    """``path`` exists and only its owner (and group) may read it: it holds a secret."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        raise ConfigError(f"{flag} {path}: mode {mode:04o} lets others read or change a secret; run 'chmod 600 {path}'")
    return path


# ---- the command line --------------------------------------------------------------


def _target(args: argparse.Namespace) -> Target:
    flags = BrokerFlags(
        protocol=args.protocol,
        cafile=args.cafile,
        cert=args.cert,
        key=args.key,
        username=args.username,
        password_file=args.password_file,
    )
    return resolve_target(args.broker, args.config, args.prefix, flags)


def cmd_monitor(args: argparse.Namespace) -> int:
    target = _target(args)
    every = args.table_every if args.table_every is not None else 0.0 if args.json or args.once else TABLE_EVERY_S
    opts = MonitorOptions(
        site=args.site,
        json=args.json,
        table_every_s=every,
        duration_s=ONCE_S if args.once else args.duration,
        overdue_after_s=args.overdue_after,
        full_table=args.table,
        snapshots=args.snapshots,
    )
    keys = sys.stdin if args.ack and sys.stdin.isatty() else None
    if args.ack and keys is None:
        print(
            "campus-agent monitor: --ack needs a terminal on stdin; acknowledging is off "
            "(from a script, use: campus-agent ack EVENT_ID --device SITE/DEVICE)",
            file=sys.stderr,
        )
    try:
        return run_monitor(target, opts, out=sys.stdout, err=sys.stderr, keys=keys)
    except ConfigError:
        raise
    except AgentError as exc:
        print(f"campus-agent monitor: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:  # e.g. `| head`: stop quietly, and keep the interpreter from failing at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def cmd_ack(args: argparse.Namespace) -> int:
    target = _target(args)
    site, device = args.device
    try:
        cmd_id, reply = send_ack(target, site, device, args.event_id, timeout=args.timeout)
    except ConfigError:
        raise
    except AgentError as exc:
        print(f"campus-agent ack: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if reply is None:
        print(
            f"campus-agent ack: no reply from {site}/{device} to {cmd_id} within {args.timeout:g} s; "
            "is the device online, and does its agent take ack commands?",
            file=sys.stderr,
        )
        return EXIT_FAIL
    if args.json:
        print(
            json.dumps(
                {
                    "site": site,
                    "device": device,
                    "event_id": args.event_id,
                    "cmd_id": cmd_id,
                    "ok": reply.ok,
                    "error": reply.error,
                }
            )
        )
    elif reply.ok:
        print(f"{site}/{device}: ack of event {args.event_id} accepted ({cmd_id})")
    else:
        why = escape((reply.error or "no reason given")[:MAX_REASON])  # the device's words: never raw to a terminal
        print(f"{site}/{device}: ack of event {args.event_id} REFUSED: {why} ({cmd_id})")
    return EXIT_OK if reply.ok else EXIT_FAIL


def add_monitor_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``monitor`` and ``ack`` subcommands; each sets ``func(args) -> int``."""
    mon = _with_connection(sub.add_parser("monitor", help="watch the fleet's events and heartbeats live"))
    mon.add_argument("--site", type=_site, help="only this site (default: the whole fleet)")
    mon.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    when = mon.add_mutually_exclusive_group()
    when.add_argument("--duration", type=_seconds, metavar="SECONDS", help="stop after this long")
    when.add_argument("--once", action="store_true", help="print the board once and exit")
    mon.add_argument(
        "--table",
        action="store_true",
        help="print every device, problem first, instead of only those that need attention",
    )
    mon.add_argument(
        "--table-every",
        type=_seconds,
        metavar="SECONDS",
        help=f"print the board this often; 0 never (default {TABLE_EVERY_S:g}, with --json 0)",
    )
    mon.add_argument(
        "--overdue-after",
        type=_seconds,
        metavar="SECONDS",
        help="a device is overdue after this long without a status (default: 3 x its heartbeat)",
    )
    mon.add_argument(
        "--snapshots",
        type=Path,
        metavar="DIR",
        help="save alarm photos as DIR/SITE/DEVICE/EVENT_ID.jpg and show them on their alarms",
    )
    mon.add_argument(
        "--ack",
        action="store_true",
        help="Enter (or a + Enter) acknowledges the newest real panic/tamper (a TEST press only when none waits); "
        "needs a terminal",
    )
    mon.set_defaults(func=cmd_monitor)

    ack = _with_connection(sub.add_parser("ack", help="acknowledge one alarm and wait for the device's reply"))
    ack.add_argument("event_id", type=_event_id, help="the event's id (32 hex digits, shown by monitor)")
    ack.add_argument("--device", type=_device, required=True, metavar="SITE/DEVICE", help="the device that sent it")
    ack.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS", help="wait this long for the reply")
    ack.add_argument("--json", action="store_true", help="print the outcome as JSON")
    ack.set_defaults(func=cmd_ack)


def _with_connection(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--broker", type=broker_address, metavar="HOST:PORT", help="the broker (TLS: its TLS port)")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"take brokers, TLS and credentials from this agent config (default {DEFAULT_PATH})",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="MQTT version; auto tries 5, then 3.1.1 (default: the config's, else auto)",
    )
    p.add_argument("--cafile", type=Path, metavar="FILE", help="TLS: verify the broker with this CA certificate")
    p.add_argument("--cert", type=Path, metavar="FILE", help="TLS: client certificate (with --key)")
    p.add_argument("--key", type=Path, metavar="FILE", help="TLS: client private key (with --cert)")
    p.add_argument("--username", metavar="NAME", help="broker user name")
    p.add_argument(
        "--password-file", type=Path, metavar="FILE", help="file holding the broker password (mode 600; needs TLS)"
    )
    p.add_argument("--prefix", type=_prefix, help="topic prefix (default: the config's, else campus)")
    return p


def broker_address(text: str) -> BrokerAddress:
    """``HOST:PORT``, ``HOST`` (port 1883) or ``[IPv6]:PORT``, for ``--broker``."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, "1883"
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT (e.g. broker.campus.lan:1883)")
    return BrokerAddress(host, int(port))


def _site(text: str) -> str:
    if not valid_id(text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a site id (lower-case letters, digits and '-')")
    return text


def _device(text: str) -> tuple[str, str]:
    site, _, device = text.partition("/")
    if not valid_id(site) or not valid_id(device):
        raise argparse.ArgumentTypeError(f"'{text}' is not SITE/DEVICE (e.g. main/gate-north-1)")
    return site, device


def _event_id(text: str) -> str:
    if not valid_event_id(text):
        raise argparse.ArgumentTypeError(f"'{text}' is not an event id (32 lower-case hex digits)")
    return text


def _prefix(text: str) -> str:
    if not text or any(c in text for c in "+#") or "" in text.split("/"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a topic prefix (no '+', '#' or empty levels)")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e7:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds >= 0")
    return value
