"""``campus-agent monitor`` and ``campus-agent ack``: watch the fleet, acknowledge alarms.

For technicians at a gate and operators at the centre.  ``monitor`` prints
each event once as it arrives, a table of devices every few seconds (plain
text, fine in a pipe or a log file), and with ``--ack`` sends the contract's
``ack`` for the latest alarm when Enter is pressed.  ``ack`` sends one ack and
waits for the device's reply.

Where to connect: ``--broker HOST:PORT`` (plain MQTT, anonymous), or the
``mqtt`` section of an agent config (``-c FILE``: brokers, TLS, username and
password).  Both: the config's TLS and credentials with the given address.
Neither: the default config, if it exists.  With a device's own credentials
the broker's ACL may hide the rest of the fleet.

Exit status: 0 ok; 1 broker unreachable, ack refused or unanswered; 2 bad
arguments, or a config problem raised as :class:`~agent.errors.ConfigError`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.central.acks import AckDesk, Reply, ack_command, parse_reply, valid_event_id
from agent.central.display import Line, LineKind, clock_text, device_key, valid_id
from agent.central.fleet import FleetView
from agent.central.link import DEFAULT_CONNECT_TIMEOUT_S, CentralLink, Inbox, Incoming, LinkNote, LinkSettings
from agent.config import DEFAULT_PATH, BrokerAddress, load_config
from agent.errors import AgentError, ConfigError
from agent.events import iso_ms

EXIT_OK, EXIT_FAIL = 0, 1
TABLE_EVERY_S = 10.0
ONCE_S = 1.0
_FIRST_TABLE_S = 1.0
_IDLE_S = 0.25
_BATCH = 1000


@dataclass(frozen=True)
class Target:
    """Where the monitor connects, and the topic prefix it watches."""

    link: LinkSettings
    prefix: str = "campus"


@dataclass(frozen=True)
class MonitorOptions:
    """What ``campus-agent monitor`` shows; times in seconds, 0 or ``None`` meaning never."""

    site: str | None = None
    json: bool = False
    table_every_s: float = TABLE_EVERY_S
    duration_s: float | None = None
    overdue_after_s: float | None = None


def resolve_target(broker: BrokerAddress | None, config: Path | None, prefix: str | None, *,
                   default_config: Path = DEFAULT_PATH) -> Target:
    """Combine ``--broker``, ``-c`` and ``--prefix`` into a :class:`Target`.

    Raises:
        ConfigError: neither a broker nor a readable config was given, or the
            config is invalid.

    """
    path = config
    if path is None and broker is None:
        if not default_config.exists():
            raise ConfigError(
                f"no broker given: pass --broker HOST:PORT (e.g. --broker 127.0.0.1:1883), or -c FILE, an agent "
                f"config whose mqtt section names the broker, TLS and credentials ({default_config} does not exist)")
        path = default_config
    mqtt = load_config(path).mqtt if path is not None else None
    brokers = (broker,) if broker is not None else mqtt.brokers if mqtt is not None else ()
    timeout = mqtt.connect_timeout_s if mqtt is not None else DEFAULT_CONNECT_TIMEOUT_S
    return Target(LinkSettings(brokers, mqtt, timeout), prefix or (mqtt.topic_prefix if mqtt else "campus"))


def subscriptions(prefix: str, site: str | None, *, replies: bool) -> list[str]:
    """The contract's central-side topics, for one site or (``None``) the whole fleet."""
    scope = f"{prefix}/{site or '+'}/+"
    return [f"{scope}/status", f"{scope}/event/#"] + ([f"{scope}/reply"] if replies else [])


def run_monitor(target: Target, opts: MonitorOptions, *, out: TextIO, err: TextIO, keys: TextIO | None = None,
                stop: threading.Event | None = None, wall: Callable[[], float] = time.time) -> int:
    """Connect, subscribe and print until ``stop``, the duration, ``q`` or Ctrl-C.

    ``keys`` is where Enter presses come from (``--ack``); ``None`` turns
    acknowledging off.  Raises :class:`~agent.errors.AgentError` when no broker
    can be reached.
    """
    inbox: Inbox = queue.SimpleQueue()
    with CentralLink(target.link, inbox, wall=wall) as link:
        broker = link.connect()
        link.subscribe(subscriptions(target.prefix, opts.site, replies=keys is not None))
        scope = f"{target.prefix}/{opts.site or '+'}/+"
        hint = "; Enter acknowledges the latest alarm, q quits" if keys is not None else ""
        print(f"monitoring {scope} on {broker} as {link.client_id}{hint}; Ctrl-C stops", file=err, flush=True)
        pressed: queue.SimpleQueue[str] = queue.SimpleQueue()
        if keys is not None:
            threading.Thread(target=_read_keys, args=(keys, pressed), name="monitor-keys", daemon=True).start()
        return _Session(link, inbox, target.prefix, opts, out, wall=wall).run(stop or threading.Event(), pressed)


class _Session:
    """The print loop: the only thread that touches the fleet view, the desk and ``out``."""

    def __init__(self, link: CentralLink, inbox: Inbox, prefix: str, opts: MonitorOptions, out: TextIO, *,
                 wall: Callable[[], float]) -> None:
        self.link, self.inbox, self.opts, self.out, self.wall = link, inbox, opts, out, wall
        self.fleet = FleetView(prefix, overdue_after_s=opts.overdue_after_s)
        self.desk = AckDesk(prefix)

    def run(self, stop: threading.Event, pressed: queue.SimpleQueue[str]) -> int:
        start = self.wall()
        end = start + self.opts.duration_s if self.opts.duration_s is not None else None
        every = self.opts.table_every_s
        next_table = start + min(_FIRST_TABLE_S, every) if every > 0 else None
        try:
            while not stop.is_set():
                now = self.wall()
                if end is not None and now >= end:
                    break
                wait = min([_IDLE_S, *(t - now for t in (end, next_table) if t is not None)])
                self._drain(max(0.0, wait))
                if not self._keys(pressed):
                    break
                now = self.wall()
                if self.link.connected:
                    self._emit(self.fleet.tick(now) + self.desk.tick(now))
                if next_table is not None and now >= next_table:
                    self._table(now)
                    next_table = now + every
        except KeyboardInterrupt:
            pass
        self._table(self.wall())
        return EXIT_OK

    def _drain(self, wait: float) -> None:
        """Handle what has arrived, at most a batch, so a flood still leaves room for keys and ticks."""
        for n in range(_BATCH):
            try:
                item = self.inbox.get(timeout=wait) if n == 0 else self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Incoming):
                self._emit(self.fleet.feed(item.topic, item.payload, item.arrival, retained=item.retained)
                           + self.desk.feed(item.topic, item.payload, item.arrival))
            else:
                self._link_note(item)

    def _keys(self, pressed: queue.SimpleQueue[str]) -> bool:
        """Act on keys pressed; False when the user asked to quit."""
        while not pressed.empty():
            key = pressed.get_nowait()
            if key in ("q", "quit"):
                return False
            if key in ("", "a"):
                self._ack(self.wall())
        return True

    def _ack(self, now: float) -> None:
        alarm = self.desk.next_unacked()
        if alarm is None:
            self._note(now, LineKind.WARNING, "nothing to acknowledge: no unacknowledged panic or tamper event")
            return
        cmd_id, payload = ack_command(alarm.event_id, now)
        self.desk.sent(alarm, cmd_id, now)
        try:
            self.link.publish(self.desk.command_topic(alarm), payload)
        except AgentError as exc:
            self.desk.failed(cmd_id)
            self._note(now, LineKind.WARNING, f"ack not sent: {exc}")
            return
        text = (f"{clock_text(now, None)}  {device_key(alarm.site, alarm.device)}  ack sent for {alarm.type} "
                f"{alarm.event_id} as {cmd_id}; waiting for the reply")
        self._emit([Line(LineKind.ACK, text, {"kind": "ack", "sent": iso_ms(now), "site": alarm.site,
                                              "device": alarm.device, "event_id": alarm.event_id, "cmd_id": cmd_id})])

    def _link_note(self, note: LinkNote) -> None:
        self._note(self.wall(), LineKind.LINK, note.text)

    def _note(self, now: float, kind: LineKind, text: str) -> None:
        label = "WARNING" if kind is LineKind.WARNING else "LINK   "
        self._emit([Line(kind, f"{clock_text(now, None)}  {label}  {text}",
                         {"kind": kind.value, "arrived": iso_ms(now), "text": text})])

    def _emit(self, lines: list[Line]) -> None:
        for line in lines:
            self.out.write((json.dumps(line.record, ensure_ascii=False) if self.opts.json else line.text) + "\n")
            if line.alarm is not None:
                self.desk.offer(line.alarm)
        if lines:
            self.out.flush()

    def _table(self, now: float) -> None:
        if self.opts.json:
            self._emit(self.fleet.device_lines(now))
        else:
            self.out.write(f"\n{self.fleet.table(now)}\n\n")
            self.out.flush()


def _read_keys(keys: TextIO, pressed: queue.SimpleQueue[str]) -> None:
    for line in iter(keys.readline, ""):
        pressed.put(line.strip().lower())


def send_ack(target: Target, site: str, device: str, event_id: str, *, timeout: float) -> tuple[str, Reply | None]:
    """Publish one ``ack`` and wait ``timeout`` seconds for its reply: (cmd_id, reply or None)."""
    root = f"{target.prefix}/{site}/{device}"
    inbox: Inbox = queue.SimpleQueue()
    with CentralLink(target.link, inbox, name="ack") as link:
        link.connect()
        link.subscribe([f"{root}/reply"])
        cmd_id, payload = ack_command(event_id, time.time())
        link.publish(f"{root}/cmd/ack", payload)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = inbox.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(item, Incoming) and item.topic == f"{root}/reply":
                reply = parse_reply(item.payload)
                if reply is not None and reply.cmd_id == cmd_id:
                    return cmd_id, reply
        return cmd_id, None


# ---- the command line --------------------------------------------------------------


def cmd_monitor(args: argparse.Namespace) -> int:
    target = resolve_target(args.broker, args.config, args.prefix)
    every = args.table_every if args.table_every is not None else 0.0 if args.json or args.once else TABLE_EVERY_S
    opts = MonitorOptions(site=args.site, json=args.json, table_every_s=every,
                          duration_s=ONCE_S if args.once else args.duration,
                          overdue_after_s=args.overdue_after)
    keys = sys.stdin if args.ack and sys.stdin.isatty() else None
    if args.ack and keys is None:
        print("campus-agent monitor: --ack needs a terminal on stdin; acknowledging is off "
              "(from a script, use: campus-agent ack EVENT_ID --device SITE/DEVICE)", file=sys.stderr)
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
    target = resolve_target(args.broker, args.config, args.prefix)
    site, device = args.device
    try:
        cmd_id, reply = send_ack(target, site, device, args.event_id, timeout=args.timeout)
    except ConfigError:
        raise
    except AgentError as exc:
        print(f"campus-agent ack: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if reply is None:
        print(f"campus-agent ack: no reply from {site}/{device} to {cmd_id} within {args.timeout:g} s; "
              "is the device online, and does its agent take ack commands?", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps({"site": site, "device": device, "event_id": args.event_id, "cmd_id": cmd_id,
                          "ok": reply.ok, "error": reply.error}))
    elif reply.ok:
        print(f"{site}/{device}: ack of event {args.event_id} accepted ({cmd_id})")
    else:
        print(f"{site}/{device}: ack of event {args.event_id} REFUSED: {reply.error or 'no reason given'} ({cmd_id})")
    return EXIT_OK if reply.ok else EXIT_FAIL


def add_monitor_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``monitor`` and ``ack`` subcommands; each sets ``func(args) -> int``."""
    mon = _with_connection(sub.add_parser("monitor", help="watch the fleet's events and heartbeats live"))
    mon.add_argument("--site", type=_site, help="only this site (default: the whole fleet)")
    mon.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    when = mon.add_mutually_exclusive_group()
    when.add_argument("--duration", type=_seconds, metavar="SECONDS", help="stop after this long")
    when.add_argument("--once", action="store_true", help="print the device table once and exit")
    mon.add_argument("--table-every", type=_seconds, metavar="SECONDS",
                     help=f"print the device table this often; 0 never (default {TABLE_EVERY_S:g}, with --json 0)")
    mon.add_argument("--overdue-after", type=_seconds, metavar="SECONDS",
                     help="a device is overdue after this long without a status (default: 3 x its heartbeat)")
    mon.add_argument("--ack", action="store_true",
                     help="Enter (or a + Enter) acknowledges the latest panic/tamper; needs a terminal")
    mon.set_defaults(func=cmd_monitor)

    ack = _with_connection(sub.add_parser("ack", help="acknowledge one alarm and wait for the device's reply"))
    ack.add_argument("event_id", type=_event_id, help="the event's id (32 hex digits, shown by monitor)")
    ack.add_argument("--device", type=_device, required=True, metavar="SITE/DEVICE", help="the device that sent it")
    ack.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS", help="wait this long for the reply")
    ack.add_argument("--json", action="store_true", help="print the outcome as JSON")
    ack.set_defaults(func=cmd_ack)


def _with_connection(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--broker", type=broker_address, metavar="HOST:PORT",
                   help="the broker, plain MQTT (for TLS and passwords use -c)")
    p.add_argument("-c", "--config", type=Path, metavar="FILE",
                   help=f"take brokers, TLS and credentials from this agent config (default {DEFAULT_PATH})")
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
