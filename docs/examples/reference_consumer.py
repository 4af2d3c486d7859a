"""A reference central consumer for campus edge agents (contract v1).

Shows the four things every central server must get right:

1. a persistent session (MQTT 5 clean_start=False with a session expiry), so
   events published while the consumer is down wait at the broker;
2. de-duplication on the event ``id`` of each device (delivery is at least once);
3. gap detection on ``seq`` per device (a gap is either still in flight or
   was evicted under the documented disk rule: look at the status's
   ``outbox.dropped``);
4. re-timing events stamped while the device clock was not synchronised;

and two every consumer needs against a faulty or hostile device: a message
it cannot handle is one warning line, never an exception out of paho's
callback (which would stop the loop before the PUBACK, and the persistent
session would bring the message back at every restart); and nothing a device
sends is printed raw, nor placed anywhere but where its topic says;

and, with ``--snapshots DIR``, saves alarm photos (``R/snapshot/{event_id}``)
as ``DIR/{site}/{device}/{event_id}.jpg`` (``{event_id}-{n}.jpg`` for part
*n* > 1) the safe way: ids checked before they become path parts, no symlink
followed, the file written to a temporary name and renamed into place.

Run:  python docs/examples/reference_consumer.py --host broker.campus.lan --port 8883 \
          --cafile ca.crt --cert central.crt --key central.key
With several consumer instances (MQTT 5 broker: mosquitto 2, EMQX, HiveMQ),
give each its own --client-id and the same --group NAME: the shared
subscription ``$share/NAME/campus/+/+/event/#`` hands each event to one of
them.  RabbitMQ 3.10 has no shared subscriptions: one consumer per queue.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import sys
import unicodedata
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # site and device ids (contract)
_EVENT_ID = re.compile(r"[0-9a-f]{32}")
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,31}")  # event types: the topic's last level
_UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # controls, bidi and other format characters, separators
_PART = re.compile(r"([1-9][0-9]?)/([1-9][0-9]?)")
MAX_PHOTO_BYTES = 16 * 1024 * 1024


def save_photo(root: Path, topic: str, payload: bytes, user_properties: dict[str, str]) -> str:
    """Save one photo under ``root``; the line to print (where it went, or why not).

    The topic's levels come from a device: checked before they name a path,
    and every directory is opened with O_NOFOLLOW, so nothing lands outside
    ``root``.  Without MQTT 5's ``part`` (MQTT 3.1.1) the first free name is
    taken; a photo whose bytes are already saved for the event is a
    redelivery (at least once) and is skipped.
    """
    levels = topic.split("/")
    shown = topic.encode("unicode_escape").decode("ascii")  # nothing a terminal acts on
    if len(levels) != 5 or not (_ID.fullmatch(levels[1]) and _ID.fullmatch(levels[2])):
        return f"refused photo on {shown}: site or device is not a contract id"
    site, device, event_id = levels[1], levels[2], levels[4]
    if not _EVENT_ID.fullmatch(event_id) or user_properties.get("event_id", event_id) != event_id:
        return f"refused photo on {shown}: not an event id"
    if len(payload) > MAX_PHOTO_BYTES or payload[:2] != b"\xff\xd8":
        return f"refused photo on {shown}: not a JPEG of at most {MAX_PHOTO_BYTES} bytes"
    part = _PART.fullmatch(user_properties.get("part", ""))
    numbers = [int(part[1])] if part else range(1, 65)
    fds: list[int] = []
    try:
        root.mkdir(parents=True, exist_ok=True)
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
        for level in (site, device):
            with contextlib.suppress(FileExistsError):
                os.mkdir(level, 0o750, dir_fd=fds[-1])
            fds.append(os.open(level, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        name = _free_name(fds[-1], event_id, numbers, payload)
        if name is None:
            return f"{site}/{device}: photo for {event_id} already saved"
        tmp = f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=fds[-1])
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=fds[-1], dst_dir_fd=fds[-1])
    except OSError as exc:
        return f"refused photo on {shown}: {exc.strerror or exc} (a symlink under {root} is never followed)"
    finally:
        for fd in fds:
            os.close(fd)
    return f"PHOTO for {event_id} at {site}/{device} saved as {root / site / device / name}"


def _free_name(dir_fd: int, event_id: str, numbers: range | list[int], payload: bytes) -> str | None:
    """The name to write, or None when these bytes are saved already; OSError for a symlink in the way."""
    for n in numbers:
        name = f"{event_id}.jpg" if n == 1 else f"{event_id}-{n}.jpg"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            return name
        with os.fdopen(fd, "rb") as f:
            if f.read(MAX_PHOTO_BYTES + 1) == payload:
                return None
        if len(numbers) == 1:
            return name  # MQTT 5 named the part: a newer photo for it replaces the old one
    raise OSError(f"64 different photos for {event_id} already")


def shown(value: object) -> str:
    r"""``value`` as text with nothing a terminal acts on: ESC shows as ``\x1b``, a bidi override as ``\u202e``.

    Every field a device sends is text it chose; printed raw, it could move
    the cursor, clear the screen or forge a line ("all clear").
    """
    text = value if isinstance(value, str) else "?" if value is None else json.dumps(value)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case
    return "".join(_shown_char(ch) for ch in text)


def _shown_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch == " " or (ch.isprintable() and unicodedata.category(ch) not in _UNSAFE):
        return ch
    return ch.encode("unicode_escape").decode("ascii")


@dataclass
class Device:
    last_seq: int = 0
    boot_offsets: dict[str, float] = field(default_factory=dict)  # boot_id -> wall - mono (s), from synced docs
    status: dict[str, Any] = field(default_factory=dict)


class Consumer:
    """Pure logic: feed it (topic, payload) and it returns what a person should see."""

    def __init__(self, dedup_size: int = 100_000) -> None:
        self.seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # (site, device, id): ids are per device
        self.dedup_size = dedup_size
        self.devices: dict[tuple[str, str], Device] = {}

    def handle(self, topic: str, payload: bytes | bytearray) -> list[str]:
        """The lines for one message; never raises.

        A message that cannot be handled is one warning line.  An exception
        out of paho's on_message would stop loop_forever before the PUBACK, and
        the persistent session would hand the same message back at every
        restart: one bad event would stop the consumer for good.
        """
        try:
            return self._handle(topic, payload)
        except Exception as exc:
            return [f"WARNING ignored message on {shown(topic)}: {type(exc).__name__}: {shown(str(exc))}"]

    def _handle(self, topic: str, payload: bytes | bytearray) -> list[str]:
        parts = topic.split("/")
        if len(parts) < 4:
            return []
        site, device = parts[1], parts[2]  # the place is the topic's (an ACL ties it to a device)
        if not (_ID.fullmatch(site) and _ID.fullmatch(device)):
            return [f"ignored message on {shown(topic)}: site or device is not a contract id"]
        doc = _document(payload)
        if isinstance(doc, str):
            return [f"ignored {doc} on {shown(topic)}"]
        if parts[3:] == ["status"]:
            dev = self.devices.setdefault((site, device), Device())
            dev.status = doc
            self._learn_offset(dev, doc)
            return [f"{site}/{device} is {shown(doc.get('state'))}"]
        if len(parts) == 5 and parts[3] == "event" and _TYPE.fullmatch(parts[4]):
            why = _refused(doc, site, device, parts[4])
            return [f"ignored event on {shown(topic)}: {why}"] if why else self._event(site, device, parts[4], doc)
        return []

    def _event(self, site: str, device: str, etype: str, doc: dict[str, Any]) -> list[str]:
        key = (site, device, doc["id"])
        if key in self.seen:  # at-least-once: a redelivery after a reconnect
            self.seen.move_to_end(key)
            return []
        dev = self.devices.setdefault((site, device), Device())
        out: list[str] = []
        seq = doc["seq"]
        if dev.last_seq and seq > dev.last_seq + 1:
            outbox = dev.status.get("outbox")
            dropped = outbox.get("dropped") if isinstance(outbox, dict) else None
            out.append(
                f"gap: seq {dev.last_seq + 1}..{seq - 1} from {site}/{device} not seen "
                f"(still in flight, or evicted: device reports {shown(dropped)} dropped)"
            )
        test = " (TEST)" if doc.get("test") is True else ""
        when = self.retime(dev, doc)
        out.append(f"{etype.upper()}{test} at {site}/{device} from {shown(doc.get('source'))} at {when} seq {seq}")
        self.seen[key] = None  # only once it is shown: an event that failed comes back as new
        if len(self.seen) > self.dedup_size:
            self.seen.popitem(last=False)
        dev.last_seq = max(dev.last_seq, seq)
        return out

    @staticmethod
    def _learn_offset(dev: Device, status: dict[str, Any]) -> None:
        """A synced status of a boot gives its clock offset too: after a power cut it often comes before any press."""
        agent, mono_ms, wall = status.get("agent"), status.get("mono_ms"), _timestamp(status.get("ts"))
        boot = agent.get("boot_id") if isinstance(agent, dict) else None
        if status.get("clock_synced") is True and isinstance(boot, str) and _whole(mono_ms) and wall is not None:
            dev.boot_offsets[boot] = wall - mono_ms / 1000.0

    def retime(self, dev: Device, doc: dict[str, Any]) -> str:
        """Best known wall time of an event; marked '~' when re-timed, '?' when unknown."""
        ts, mono_ms, boot, wall = doc.get("ts"), doc.get("mono_ms"), doc.get("boot_id"), _timestamp(doc.get("ts"))
        if wall is None or not _whole(mono_ms) or not isinstance(boot, str):
            return f"{shown(ts)}?"  # nothing to re-time with
        if doc.get("clock_synced") is True:
            dev.boot_offsets[boot] = wall - mono_ms / 1000.0
            return shown(ts)
        known = dev.boot_offsets.get(boot)
        if known is None:
            return f"{shown(ts)}?"  # re-time later, once a synced event of this boot arrives
        try:
            fixed = dt.datetime.fromtimestamp(known + mono_ms / 1000.0, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return f"{shown(ts)}?"
        return fixed.isoformat(timespec="milliseconds").replace("+00:00", "Z") + "~"


def _refused(doc: dict[str, Any], site: str, device: str, etype: str) -> str | None:
    """Why an event is not shown, or None: its place is its topic's, and de-dup and gaps need its id and seq."""
    for name, expected in (("site", site), ("device", device), ("type", etype)):
        if doc.get(name, expected) != expected:
            return f"{name} {shown(doc[name])[:70]} is not the topic's ({expected})"
    if not isinstance(doc.get("id"), str) or not _EVENT_ID.fullmatch(doc["id"]):
        return f"id {shown(doc.get('id'))[:40]} is not 32 lower-case hex digits"
    if not _whole(doc.get("seq")) or doc["seq"] < 1:
        return f"seq {shown(doc.get('seq'))[:40]} is not a whole number from 1"
    return None


def _document(payload: bytes | bytearray) -> dict[str, Any] | str:
    """The payload as a contract v1 document, or what it is instead."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return "non-JSON message"
    if not isinstance(doc, dict) or doc.get("v") != 1:
        return "message of unknown version"
    return doc


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _timestamp(ts: object) -> float | None:
    """``ts`` (ISO 8601) in seconds since the epoch, or None when it is not a time."""
    if not isinstance(ts, str):
        return None
    try:
        return dt.datetime.fromisoformat(ts).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--client-id", default="central-reference-consumer")
    ap.add_argument("--group", help="shared subscription group (clustered broker, several consumers)")
    ap.add_argument("--cafile", help="TLS: verify the broker with this CA (TLS is off without it)")
    ap.add_argument("--cert", help="TLS: client certificate")
    ap.add_argument("--key", help="TLS: client key")
    ap.add_argument("--username")
    ap.add_argument("--password-file", help="first line is the password; needs --cafile")
    ap.add_argument("--snapshots", type=Path, metavar="DIR", help="save alarm photos under DIR/SITE/DEVICE/")
    args = ap.parse_args(argv)
    if args.password_file and not args.cafile:
        ap.error("--password-file needs --cafile: a password must not cross the network in clear")
    return args


def _login(client: mqtt.Client, args: argparse.Namespace) -> None:
    """TLS when a CA is given; a username and password when a username is."""
    if args.cafile:
        client.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key)
    if args.username:
        password = Path(args.password_file).read_text().splitlines()[0] if args.password_file else None
        client.username_pw_set(args.username, password)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    consumer = Consumer()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=MQTTProtocolVersion.MQTTv5)
    events = "campus/+/+/event/#" if not args.group else f"$share/{args.group}/campus/+/+/event/#"
    photos = "campus/+/+/snapshot/+" if not args.group else f"$share/{args.group}/campus/+/+/snapshot/+"

    def on_connect(c: mqtt.Client, _u: Any, flags: Any, _rc: Any, _p: Any) -> None:
        if not flags.session_present:  # a new session: (re)subscribe; an old one keeps its subscriptions
            c.subscribe([(events, 1), ("campus/+/+/status", 1)] + ([(photos, 1)] if args.snapshots else []))

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, _rcs: Any, _p: Any) -> None:
        also = f" and {photos}" if args.snapshots else ""
        print(f"subscribed to {events} and campus/+/+/status{also}", file=sys.stderr, flush=True)

    def on_message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            if args.snapshots and m.topic.split("/")[3:4] == ["snapshot"]:
                props = dict(getattr(m.properties, "UserProperty", None) or [])
                print(save_photo(args.snapshots, m.topic, bytes(m.payload), props), flush=True)
                return
            for line in consumer.handle(m.topic, m.payload):
                print(line, flush=True)
        except Exception as exc:  # raised out of here, paho would stop before the PUBACK: see Consumer.handle
            print(f"WARNING message on {m.topic!a} not handled: {type(exc).__name__}: {str(exc)!a}", flush=True)

    _login(client, args)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 7 * 24 * 3600  # keep queued events for a week while we are down
    client.connect(args.host, args.port, keepalive=30, clean_start=False, properties=props)
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
