"""The local checks of ``campus-agent doctor``: one small function per check, each returning verdicts.

Every check returns :class:`Check` values and never raises for a finding, so
the runner (``runner.py``) can print each line the moment it is known and a
test can call any check on its own.  A check that is not OK always says what
to do: the technician reading it is standing at a gate, not at a desk.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from agent.camprobes import PiCameraProbe, ProbeResult, address_of, probe_http, probe_rtsp
from agent.config.model import CameraConfig, CameraKind, Config, OutboxConfig
from agent.errors import ConfigError
from agent.outbox import HEADROOM_BYTES
from agent.pins import is_mock

T = TypeVar("T")

SERVICE = "campus-agent"
_MB = 1024 * 1024
_HANG_GRACE_S = 1.0
_SYSTEMCTL_TIMEOUT_S = 5.0


class Level(StrEnum):
    """How a check came out; only FAIL makes ``doctor`` exit 1."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One verdict: ``what`` was found and, unless OK, ``todo``: what to do about it."""

    level: Level
    what: str
    todo: str = ""

    def __post_init__(self) -> None:
        if self.level is not Level.OK and not self.todo:
            raise ValueError(f"a {self.level} check must say what to do: {self.what!r}")

    @classmethod
    def ok(cls, what: str) -> Check:
        return cls(Level.OK, what)

    @classmethod
    def warn(cls, what: str, todo: str) -> Check:
        return cls(Level.WARN, what, todo)

    @classmethod
    def fail(cls, what: str, todo: str) -> Check:
        return cls(Level.FAIL, what, todo)

    @property
    def failed(self) -> bool:
        return self.level is Level.FAIL

    def line(self, arrow: str = "→") -> str:
        """``LEVEL  what  → todo`` on one line, levels padded so the findings line up."""
        text = f"{self.level.value:<4}  {' '.join(self.what.split())}"
        return f"{text}  {arrow} {' '.join(self.todo.split())}" if self.todo else text


def run_with_deadline(fn: Callable[[], T], timeout_s: float, name: str) -> T:
    """Run ``fn`` on a daemon thread and wait at most ``timeout_s`` seconds for it.

    For calls Python cannot interrupt (a DNS lookup, a hung camera driver): on
    time-out the thread is left behind, and the process exits soon anyway.

    Raises:
        TimeoutError: ``fn`` did not return in time.

    """
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # handed to the caller's thread below
            box.append((False, exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not box:
        raise TimeoutError(f"{name} did not finish within {timeout_s:g} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def split_hint(message: str) -> tuple[str, str]:
    """``"problem; what to do"`` (the agent's own error style) → (problem, what to do)."""
    problem, sep, hint = message.rpartition("; ")
    return (problem, hint) if sep else (message, "")


# ---- config ----------------------------------------------------------------------


def check_config_error(exc: ConfigError) -> list[Check]:
    """Each ``file:line: key: problem`` of a refused config as its own FAIL line, its own fix as the todo."""
    found = []
    for problem in exc.problems:
        what, hint = split_hint(problem)
        found.append(Check.fail(what, hint or "fix it in the config file, then run doctor again"))
    return found


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_config_ok(cfg: Config) -> Check:
    brokers = ", ".join(str(b) for b in cfg.mqtt.brokers)
    return Check.ok(
        f"config {cfg.source} valid: device {cfg.device.site}/{cfg.device.id}, "
        f"{_count(len(cfg.inputs), 'input')}, {_count(len(cfg.cameras), 'camera')}, broker {brokers}"
    )


# ---- GPIO ------------------------------------------------------------------------


def _pins_of(cfg: Config) -> list[tuple[str, int, bool, bool]]:
    """(label, pin, is_input, active_high) for every configured input and output."""
    pins = [(f"input '{i.name}'", i.pin, True, True) for i in cfg.inputs]
    for name, out in (("ack_led", cfg.outputs.ack_led), ("buzzer", cfg.outputs.buzzer)):
        if out is not None:
            pins.append((f"output {name}", out.pin, False, out.active_high))
    return pins


def check_pins(cfg: Config, factory: Any) -> list[Check]:
    """Claim every input (pulled up, as the agent does) and output (off), then release them.

    Only meaningful while the agent is stopped: a running agent holds the pins.
    ``factory`` is a gpiozero pin factory, or None for gpiozero's default.
    """
    from gpiozero import LED, Button  # noqa: PLC0415 - gpiozero stays behind the pin seam

    claimed: list[str] = []
    found: list[Check] = []
    for label, pin, is_input, active_high in _pins_of(cfg):
        try:
            with warnings.catch_warnings(record=True) as fallbacks:  # gpiozero's backend search, said below instead
                warnings.simplefilter("always")
                device = (
                    Button(pin, pull_up=True, bounce_time=None, pin_factory=factory)
                    if is_input
                    else LED(pin, active_high=active_high, initial_value=False, pin_factory=factory)
                )
            device.close()
            claimed.append(f"GPIO{pin}")
        except Exception as exc:  # gpiozero and its backends raise many kinds for one cause: pin unusable
            if type(exc).__name__ == "BadPinFactory":
                tried = "; ".join(str(w.message) for w in fallbacks)
                return [
                    Check.fail(
                        f"GPIO: no pin backend works on this machine ({tried or exc})",
                        "on a Raspberry Pi install python3-lgpio and set gpio.pin_factory: lgpio; "
                        "elsewhere set gpio.pin_factory: mock",
                    )
                ]
            found.append(
                Check.fail(
                    f"GPIO{pin} ({label}) cannot be claimed: {type(exc).__name__}: {exc}",
                    "check that no other program uses the pin, that the pin number is right, "
                    "and that this user is in the gpio group",
                )
            )
    if found:
        return found
    if not claimed:
        return [Check.ok("GPIO: no pins configured")]
    kind = "simulated pins (mock)" if is_mock(factory) else "GPIO pins claimable"
    return [Check.ok(f"{kind}: {', '.join(claimed)} claimed and released")]


# ---- outbox ----------------------------------------------------------------------


def _existing_ancestor(folder: Path) -> Path:
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _who() -> str:
    return "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"


def _someone_elses(path: Path) -> str | None:
    """The owner's name when ``path`` belongs to another user and we are not root, else None."""
    uid = path.stat().st_uid
    if os.geteuid() == 0 or uid == os.geteuid():
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _write_problem(db: Path, folder: Path) -> str | None:
    """Why the agent could not write here, or None: the database file, then a scratch file beside it."""
    try:
        exists = db.exists()
    except OSError as exc:
        return f"outbox folder {folder} not readable ({exc.strerror or exc})"
    if exists and not (db.is_file() and os.access(db, os.R_OK | os.W_OK, effective_ids=True)):
        return f"outbox database {db} is not a writable file"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-") as scratch:
            scratch.write(b"campus-agent doctor\n")
            scratch.flush()
            os.fsync(scratch.fileno())
    except OSError as exc:
        return f"outbox folder {folder} not writable ({exc.strerror or exc})"
    return None


def check_outbox_folder(cfg: OutboxConfig) -> list[Check]:
    """Write and delete a scratch file beside the outbox, and weigh the free space against ``max_mb``.

    The database itself is never opened: a running agent owns it, and opening
    it as root would leave root-owned WAL files the service user cannot write.
    A technician who is not root cannot test the service user's private
    folder, which is a WARN (run it with sudo), not a FAIL.
    """
    folder = cfg.path.parent
    try:
        where = _existing_ancestor(folder)
        if not where.is_dir():
            return [
                Check.fail(
                    f"outbox folder {folder}: {where} is a file, not a folder",
                    f"move {where} away or set outbox.path to another folder",
                )
            ]
        problem = _write_problem(cfg.path, where)
        owner = _someone_elses(where)
    except OSError as exc:  # a folder on the way we may not even look into
        what = f"outbox folder {folder} cannot be looked at as {_who()} ({exc.strerror or exc})"
        if os.geteuid() == 0:
            return [Check.fail(what, "check the folders on the way to outbox.path")]
        return [Check.warn(what, "run doctor with sudo to test the outbox folder")]
    if problem is not None:
        if owner is not None:
            return [
                Check.warn(
                    f"{problem}: it belongs to {owner}, so {_who()} cannot test it",
                    "run doctor with sudo to test the outbox folder",
                )
            ]
        return [
            Check.fail(
                problem,
                f"fix the owner and mode (install -d -o campus-agent -m 700 {folder}) "
                "or set outbox.path to a writable folder",
            )
        ]
    note = "" if where == folder else f" (does not exist yet; the agent creates it in {where})"
    return [_free_space(cfg, where, note)]


def _free_space(cfg: OutboxConfig, where: Path, note: str) -> Check:
    """Free space in the outbox's folder weighed against ``max_mb`` plus the headroom the outbox keeps."""
    folder = cfg.path.parent
    free = shutil.disk_usage(where).free
    cap = int(cfg.max_mb * _MB)
    free_mb, max_mb = free // _MB, f"{cfg.max_mb:g}"
    if free < HEADROOM_BYTES + _MB:
        return Check.fail(
            f"outbox folder {folder}: disk full ({free_mb} MB free); presses cannot be recorded",
            "free disk space now (old logs, /var/cache/apt: apt-get clean)",
        )
    if free < cap + HEADROOM_BYTES:
        return Check.warn(
            f"outbox folder {folder} writable{note}, but only {free_mb} MB free for an outbox cap of {max_mb} MB",
            "free disk space or lower outbox.max_mb",
        )
    return Check.ok(f"outbox folder {folder} writable (tested as {_who()}){note}, {free_mb} MB free (cap {max_mb} MB)")


# ---- clock -----------------------------------------------------------------------


def check_clock(synced: bool) -> Check:
    """The kernel's NTP state (``agent.events.kernel_clock_synced``): a WARN, since presses still go out."""
    if synced:
        return Check.ok("clock synchronised (NTP)")
    return Check.warn(
        "clock not synchronised: events carry clock_synced: false and the centre re-times them",
        "enable NTP (timedatectl set-ntp true, or enable systemd-timesyncd) and check that the "
        "NTP server is reachable (UDP port 123)",
    )


# ---- cameras ---------------------------------------------------------------------


def _camera_probe(cam: CameraConfig) -> tuple[Callable[[], ProbeResult], float]:
    """The probe for ``cam`` and how long to wait for it (s), as ``cameras.py`` budgets it."""
    if cam.kind is CameraKind.HTTP_SNAPSHOT:
        # digest auth takes two round trips, each bounded by requests' own timeouts
        return (lambda: probe_http(cam)), 2 * cam.timeout_s + _HANG_GRACE_S
    if cam.kind is CameraKind.RTSP:
        return (lambda: probe_rtsp(cam)), cam.timeout_s + _HANG_GRACE_S
    return PiCameraProbe(cam).probe, cam.timeout_s


def check_camera(cam: CameraConfig) -> Check:
    """Probe one camera once, exactly as the agent does, within its ``timeout_s``."""
    probe, limit_s = _camera_probe(cam)
    if cam.kind is CameraKind.PICAMERA2:
        label, todo = (
            f"camera {cam.name} (picamera2 #{cam.camera_num})",
            "check the ribbon cable and camera_num; reboot the Pi if it persists",
        )
    else:
        label = f"camera {cam.name} ({cam.kind.value} {address_of(cam.url or '', 0)[2]})"
        todo = "check that the camera is powered and on the network, and its url, username and password_file"
    try:
        result = run_with_deadline(probe, limit_s, f"probe-{cam.name}")
    except TimeoutError:
        return Check.fail(f"{label}: probe hung for {limit_s:g} s", todo)
    if result.ok:
        return Check.ok(f"{label}: {result.detail}")
    return Check.fail(f"{label}: {result.detail}", todo)


# ---- systemd ---------------------------------------------------------------------


def _systemctl(systemctl: str, verb: str, unit: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            [systemctl, verb, unit],
            capture_output=True,
            text=True,
            timeout=_SYSTEMCTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (done.stdout.strip() or done.stderr.strip() or "unknown").splitlines()[0]


def under_systemd(systemctl: str | None, pid1_comm: Path) -> bool:
    try:
        return systemctl is not None and pid1_comm.read_text(encoding="utf-8").strip() == "systemd"
    except OSError:
        return False


def check_systemd(
    systemctl: str | None, pid1_comm: Path = Path("/proc/1/comm"), unit: str = SERVICE, *, agent_listens: bool = False
) -> Check:
    """``systemctl is-active`` and ``is-enabled`` of the service, when systemd runs this machine."""
    if systemctl is None or not under_systemd(systemctl, pid1_comm):
        return Check.ok("not under systemd: service state not checked (skipped)")
    enabled = _systemctl(systemctl, "is-enabled", unit)
    if "not-found" in enabled or "No such file" in enabled:
        return Check.warn(f"service {unit} is not installed", "install it: sudo scripts/install.sh")
    return _service_state(unit, _systemctl(systemctl, "is-active", unit), enabled, agent_listens=agent_listens)


def _service_state(unit: str, active: str, enabled: str, *, agent_listens: bool) -> Check:
    """Restarted forever (``StartLimitIntervalSec=0``), a crash loop shows "activating", never "failed"."""
    state = f"service {unit}: {active}, {enabled}"
    if active == "failed" or (active == "activating" and not agent_listens):
        loop = ", no agent answers: it exits at start and is restarted over and over (or is only starting)"
        what = state if active == "failed" else state + loop
        return Check.fail(what, f"read why: journalctl -u {unit} -n 50; fix it, then systemctl restart {unit}")
    if active == "activating":
        return Check.warn(f"{state}: the agent is starting", "run doctor again in a minute")
    if active != "active":
        return Check.warn(state, f"start it: systemctl enable --now {unit}")
    if enabled not in ("enabled", "enabled-runtime", "static"):
        return Check.warn(state, f"it will not start after a reboot: systemctl enable {unit}")
    return Check.ok(state)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
