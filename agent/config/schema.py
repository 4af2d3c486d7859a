"""Section by section: what each key may hold and what it defaults to.

The only place defaults live.  Relative paths are taken relative to the
config file's folder, so a config and its certificates can travel together.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from agent.config.files import path_check, secret_file, trusted_file
from agent.config.model import (
    PROTOCOLS,
    BrokerAddress,
    CameraConfig,
    CameraKind,
    CommandsConfig,
    Config,
    Contact,
    ControlConfig,
    DeviceConfig,
    DoctorConfig,
    GpioConfig,
    HeartbeatConfig,
    InputConfig,
    InputKind,
    MqttConfig,
    OutboxConfig,
    OutputConfig,
    OutputsConfig,
    Secret,
    TlsConfig,
)
from agent.config.reader import (
    Ctx,
    Invalid,
    Section,
    boolean,
    integer,
    mqtt_text,
    nonempty,
    number,
    one_of,
    string,
    topic_id,
    topic_prefix,
    url_check,
)
from agent.config.snapshots import CAMERA_KEYS, INPUT_KEYS, parse_snapshot_config

PIN_FACTORIES = ("default", "mock", "lgpio", "rpigpio", "pigpio", "native")
UNIX_PATH_MAX = 107
MAX_CAMERAS = 16
_BCM = integer(0, 27, "a BCM pin number")


def _read_secret(sec: Section, key: str, base: Path) -> Secret | None:
    p = sec.get(key, secret_file(base), None)
    if p is None:
        return None
    try:
        value = p.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        sec.ctx.error(sec.key_line(key), sec.sub(key), f"cannot read {p}: {exc}")
        return None
    if not value:
        sec.ctx.error(sec.key_line(key), sec.sub(key), f"{p} is empty; write the password into it")
        return None
    return Secret(value, p)


def _device(root: Section) -> DeviceConfig:
    sec = root.section("device")
    dev = DeviceConfig(
        id=sec.get("id", topic_id),
        site=sec.get("site", topic_id),
        location=sec.get("location", string, ""),
    )
    sec.done()
    return dev


def _broker(sec: Section, default_port: int) -> BrokerAddress:
    return BrokerAddress(
        host=sec.get("host", nonempty),
        port=sec.get("port", integer(1, 65535, "a TCP port"), default_port),
    )


def _tls(sec: Section, base: Path) -> TlsConfig | None:
    """TLS whenever ``tls:`` is written, even with every key under it commented out (system CAs then).

    A section that is there must never mean clear text.
    """
    if "tls" not in sec.data:
        sec.raw("tls")
        return None
    t = sec.section("tls")
    cfg = TlsConfig(
        ca_file=t.get("ca_file", trusted_file(base), None),
        cert_file=t.get("cert_file", trusted_file(base), None),
        key_file=t.get("key_file", secret_file(base), None),
        check_hostname=t.get("check_hostname", boolean, True),
    )
    if (cfg.cert_file is None) != (cfg.key_file is None) and t.ok:
        t.ctx.error(t.line, t.path, "cert_file and key_file go together; give both or neither")
    if not cfg.check_hostname and cfg.ca_file is None and t.ok:
        t.ctx.error(
            t.key_line("check_hostname"),
            t.sub("check_hostname"),
            "check_hostname: false needs ca_file: without the campus CA any public certificate "
            "for any name would be accepted as the broker; add ca_file",
        )
    t.done()
    return cfg


def _mqtt(root: Section, device: DeviceConfig, base: Path) -> MqttConfig:
    sec = root.section("mqtt")
    tls = _tls(sec, base)
    default_port = 8883 if tls is not None else 1883
    brokers: list[BrokerAddress] = []
    if sec.has("brokers"):
        if sec.has("host"):
            sec.ctx.error(sec.key_line("host"), sec.sub("host"), "give either host/port or brokers, not both")
        sec.raw("host")
        sec.raw("port")
        for item, _ in sec.items("brokers"):
            brokers.append(_broker(item, default_port))
            item.done()
        if not brokers and sec.ok:
            sec.ctx.error(sec.key_line("brokers"), sec.sub("brokers"), "list at least one broker")
    else:
        brokers.append(_broker(sec, default_port))
    rmin = sec.get("reconnect_min_s", number(0.1, 600, "seconds"), 1.0)
    rmax = sec.get("reconnect_max_s", number(1, 3600, "seconds"), 60.0)
    if rmin is not None and rmax is not None and rmin > rmax:
        sec.ctx.error(
            sec.key_line("reconnect_min_s"), sec.sub("reconnect_min_s"), f"must not exceed reconnect_max_s ({rmax:g})"
        )
    username = sec.get("username", mqtt_text, None)
    password = _read_secret(sec, "password_file", base)
    if password is not None and username is None:
        sec.ctx.error(
            sec.key_line("password_file"), sec.sub("password_file"), "a password needs a username; add mqtt.username"
        )
    plaintext_ok = sec.get("allow_plaintext_password", boolean, False)
    if password is not None and tls is None and not plaintext_ok:
        sec.ctx.error(
            sec.key_line("password_file"),
            sec.sub("password_file"),
            "a password without TLS is sent in clear text to anyone on the network; add an mqtt.tls "
            "section (ca_file at least), or for a lab only set mqtt.allow_plaintext_password: true",
        )
    cfg = MqttConfig(
        brokers=tuple(b for b in brokers if cast("str | None", b.host) is not None),
        keepalive_s=sec.get("keepalive_s", integer(5, 1200, "seconds,"), 30),
        topic_prefix=sec.get("topic_prefix", topic_prefix, "campus"),
        client_id=sec.get("client_id", mqtt_text, f"{device.site}/{device.id}"),  # '/' is in no id: injective
        protocol=sec.get("protocol", lambda v: one_of(*PROTOCOLS)(str(v)), "auto"),
        username=username,
        password=password,
        tls=tls,
        allow_plaintext_password=bool(plaintext_ok) and password is not None and tls is None,
        connect_timeout_s=sec.get("connect_timeout_s", number(1, 120, "seconds"), 10.0),
        reconnect_min_s=rmin,
        reconnect_max_s=rmax,
        max_inflight=sec.get("max_inflight", integer(1, 1000), 20),
        drain_rate_per_s=sec.get("drain_rate_per_s", number(1, 100000, "events per second"), 500.0),
    )
    sec.done()
    return cfg


def _flap(sec: Section, kind: InputKind, known: bool) -> tuple[int, float]:
    """Swinger shutdown (agent/flapping.py): 5 alarms a minute is more than a real intrusion opens a lid."""
    if kind is InputKind.TAMPER:
        limit = sec.get("flap_limit", integer(0, 1000, "alarms (0 = never limit)"), 5)
        return limit, sec.get("flap_window_s", number(1, 86400, "seconds"), 60.0)
    for key in ("flap_limit", "flap_window_s"):
        if sec.raw(key) is not None and known:
            why = "a panic_button is never limited: every press is a person calling for help"
            sec.ctx.error(sec.key_line(key), sec.sub(key), f"{why}; remove {key} (it is for kind: tamper)")
    return 0, 60.0


def _input(sec: Section) -> InputConfig:
    kind = sec.get("kind", lambda v: InputKind(one_of(*(k.value for k in InputKind))(v)), InputKind.PANIC_BUTTON)
    flap_limit, flap_window_s = _flap(sec, kind, known=sec.ok)  # a wrong kind is its own error, not a panic's
    default_contact = Contact.NORMALLY_CLOSED if kind is InputKind.TAMPER else Contact.NORMALLY_OPEN
    cfg = InputConfig(
        name=sec.get("name", topic_id),
        kind=kind,
        pin=sec.get("pin", _BCM),
        contact=sec.get("contact", lambda v: Contact(one_of(*(c.value for c in Contact))(v)), default_contact),
        debounce_ms=sec.get("debounce_ms", integer(0, 2000, "milliseconds"), 50),
        stuck_after_s=sec.get(
            "stuck_after_s", number(0, 86400, "seconds (0 = never)"), 0.0 if kind is InputKind.TAMPER else 120.0
        ),
        silent=sec.get("silent", boolean, False),
        flap_limit=flap_limit,
        flap_window_s=flap_window_s,
    )
    sec.done(INPUT_KEYS)  # read by agent/config/snapshots.py
    return cfg


def _output(sec: Section) -> OutputConfig:
    cfg = OutputConfig(pin=sec.get("pin", _BCM), active_high=sec.get("active_high", boolean, True))
    sec.done()
    return cfg


def _outputs(root: Section) -> OutputsConfig:
    sec = root.section("outputs")
    led = _output(sec.section("ack_led")) if sec.has("ack_led") else None
    buzzer = _output(sec.section("buzzer")) if sec.has("buzzer") else None
    cfg = OutputsConfig(
        ack_led=led,
        buzzer=buzzer,
        ack_hold_s=sec.get("ack_hold_s", number(1, 3600, "seconds"), 30.0),
        fault_after_s=sec.get("fault_after_s", number(5, 86400, "seconds"), 60.0),
    )
    sec.done(("ack_led", "buzzer"))
    return cfg


def _camera_url(kind: CameraKind | None) -> Callable[[Any], str]:
    known: dict[CameraKind | None, tuple[str, ...]] = {
        CameraKind.HTTP_SNAPSHOT: ("http", "https"),
        CameraKind.RTSP: ("rtsp",),
    }
    schemes = known.get(kind, ())
    return url_check(schemes, " or ".join(f"{s}://host/..." for s in schemes), "username and password_file")


def _camera(sec: Section, base: Path) -> CameraConfig:
    kind = sec.get("kind", lambda v: CameraKind(one_of(*(k.value for k in CameraKind))(v)))
    needs_url = kind in (CameraKind.HTTP_SNAPSHOT, CameraKind.RTSP)
    url = sec.get("url", _camera_url(kind)) if needs_url else sec.get("url", _camera_url(kind), None)
    if not needs_url and url is not None:
        sec.ctx.error(sec.key_line("url"), sec.sub("url"), f"a {kind.value if kind else ''} camera has no url")
    cfg = CameraConfig(
        name=sec.get("name", topic_id),
        kind=kind,
        url=url,
        timeout_s=sec.get("timeout_s", number(0.5, 60, "seconds"), 5.0),
        probe_interval_s=sec.get("probe_interval_s", number(5, 86400, "seconds"), 60.0),
        fail_after=sec.get("fail_after", integer(1, 100), 3),
        username=sec.get("username", nonempty, None),
        password=_read_secret(sec, "password_file", base),
        auth=sec.get("auth", one_of("basic", "digest"), "basic"),
        camera_num=sec.get("camera_num", integer(0, 15, "a camera index"), 0),
    )
    sec.done(CAMERA_KEYS)  # read by agent/config/snapshots.py
    return cfg


def _socket_path(base: Path) -> Any:
    as_path = path_check(base)

    def check(value: Any) -> Path:
        p: Path = as_path(value)
        try:
            size = len(os.fsencode(p))
        except UnicodeEncodeError:
            raise Invalid(f"{str(p)!r} cannot be a file name on this system; use plain characters") from None
        if size > UNIX_PATH_MAX:
            raise Invalid(f"UNIX socket paths stop at {UNIX_PATH_MAX} bytes; {p} is longer, pick a shorter one")
        return p

    return check


def control_socket(ctl: Section, base: Path) -> Path:
    """``control.socket`` (its one key); also read alone by the light path for ``status``."""
    socket: Path = ctl.get("socket", _socket_path(base), Path("/run/campus-agent/control.sock"))
    ctl.done()
    return socket


def _doctor(root: Section, base: Path) -> DoctorConfig:
    sec = root.section("doctor")
    cfg = DoctorConfig(
        username=sec.get("username", nonempty, None),
        password_file=sec.get("password_file", path_check(base), None),
        cert_file=sec.get("cert_file", path_check(base), None),
        key_file=sec.get("key_file", path_check(base), None),
    )
    if (cfg.cert_file is None) != (cfg.key_file is None) and sec.ok:
        sec.ctx.error(sec.line, sec.path, "cert_file and key_file go together; give both or neither")
    if (cfg.username is None) != (cfg.password_file is None) and sec.ok:
        sec.ctx.error(sec.line, sec.path, "username and password_file go together; give both or neither")
    sec.done()
    return cfg


def _check_pins(root: Section, inputs: list[tuple[InputConfig, Section]], outputs: Section) -> None:
    used: dict[int, str] = {}
    for cfg, sec in inputs:
        if cast("int | None", cfg.pin) is None:
            continue
        if cfg.pin in used:
            root.ctx.error(sec.key_line("pin"), sec.sub("pin"), f"pin {cfg.pin} is already used by {used[cfg.pin]}")
        else:
            used[cfg.pin] = f"{sec.path} ({cfg.name})"
    for key in ("ack_led", "buzzer"):
        if not outputs.has(key):
            continue
        out = outputs.data[key]
        pin = out.get("pin") if isinstance(out, dict) else None
        if isinstance(pin, int) and pin in used:
            line = out.key_lines.get("pin", outputs.key_line(key))
            root.ctx.error(line, f"{outputs.path}.{key}.pin", f"pin {pin} is already used by {used[pin]}")
        elif isinstance(pin, int):
            used[pin] = f"{outputs.path}.{key}"


def _unique_names(ctx: Ctx, items: list[tuple[Any, Section]]) -> None:
    seen: dict[str, str] = {}
    for cfg, sec in items:
        if cfg.name is None:
            continue
        if cfg.name in seen:
            ctx.error(sec.key_line("name"), sec.sub("name"), f"name '{cfg.name}' is already used by {seen[cfg.name]}")
        else:
            seen[cfg.name] = sec.path


def _one_per_sensor(ctx: Ctx, cameras: list[tuple[CameraConfig, Section]]) -> None:
    """Two picamera2 cameras on one camera_num would open the same sensor twice: the second capture fails."""
    seen: dict[int, str] = {}
    for cfg, sec in cameras:
        if cfg.kind is not CameraKind.PICAMERA2:
            continue
        if cfg.camera_num in seen:
            ctx.error(
                sec.key_line("camera_num"),
                sec.sub("camera_num"),
                f"camera_num {cfg.camera_num} is already {seen[cfg.camera_num]}; give each Pi camera its own number",
            )
        else:
            seen[cfg.camera_num] = sec.path


def build(root: Section) -> Config | None:
    """Validate the whole document; None when any problem was recorded."""
    base = root.ctx.file.parent
    device = _device(root)
    mqtt = _mqtt(root, device, base)
    gpio_sec = root.section("gpio")
    gpio = GpioConfig(pin_factory=gpio_sec.get("pin_factory", one_of(*PIN_FACTORIES), "default"))
    gpio_sec.done()
    inputs = [(_input(s), s) for s, _ in root.items("inputs")]
    _unique_names(root.ctx, inputs)
    outputs = _outputs(root)
    _check_pins(root, inputs, root.section("outputs"))
    hb = root.section("heartbeat")
    heartbeat = HeartbeatConfig(interval_s=hb.get("interval_s", number(5, 3600, "seconds"), 30.0))
    hb.done()
    cameras = [(_camera(s, base), s) for s, _ in root.items("cameras")]
    if len(cameras) > MAX_CAMERAS:
        root.ctx.error(
            root.key_line("cameras"),
            "cameras",
            f"at most {MAX_CAMERAS} cameras per device (status must stay small); got {len(cameras)}",
        )
    _unique_names(root.ctx, cameras)
    _one_per_sensor(root.ctx, cameras)
    snapshots = parse_snapshot_config(root, inputs, cameras)
    ob = root.section("outbox")
    outbox = OutboxConfig(
        path=ob.get("path", path_check(base), Path("/var/lib/campus-agent/outbox.db")),
        max_mb=ob.get("max_mb", number(1, 100000, "MiB"), 200.0),
        intake=ob.get("intake", boolean, True),
    )
    ob.done()
    control = ControlConfig(socket=control_socket(root.section("control"), base))
    cmd = root.section("commands")
    commands = CommandsConfig(rate_per_min=cmd.get("rate_per_min", integer(1, 6000), 60))
    cmd.done()
    doctor = _doctor(root, base)
    log = root.section("log")
    level = log.get("level", one_of("debug", "info", "warning", "error"), "info")
    log.done()
    root.done()
    if root.ctx.problems:
        return None
    return Config(
        source=root.ctx.file,
        device=device,
        mqtt=mqtt,
        gpio=gpio,
        inputs=tuple(c for c, _ in inputs),
        outputs=outputs,
        heartbeat=heartbeat,
        cameras=tuple(c for c, _ in cameras),
        outbox=outbox,
        control=control,
        commands=commands,
        log_level=level,
        doctor=doctor,
        snapshots=snapshots,
    )
