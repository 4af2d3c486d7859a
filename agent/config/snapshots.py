"""The ``snapshots`` section and the per-input / per-camera keys that say which camera photographs which alarm.

Three places in the YAML feed one :class:`SnapshotsConfig`:

* ``inputs[].snapshot: [gate-cam, ...]``: cameras to photograph when this input raises a real alarm;
* ``cameras[].snapshot_on: [panic, ...]``: the same, said from the camera's side
  (both are merged; each camera is taken once per alarm), and
  ``cameras[].snapshot_url``: the still-image URL of an ``rtsp`` camera (an
  ``http_snapshot`` camera uses its ``url``; a ``picamera2`` camera needs none);
* ``snapshots: {max_kb, max_mb, width, height, quality}``: sizes and caps.

Defaults (here only, as in ``schema.py``) suit a Pi 4 beside a 200 MB outbox:
1280x720 at JPEG quality 80 is typically 100-250 kB, ``max_kb`` 400 refuses a
camera that sends full-size 4K stills, and ``max_mb`` 50 holds about 250 photos
(a quarter of the outbox's share of the card) before the oldest are dropped.

The model module does not import this one at run time, so ``model.Config`` can
hold a :class:`SnapshotsConfig` without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.config.reader import Invalid, MarkedList, Section, integer, number, topic_id, url_check

if TYPE_CHECKING:
    from agent.config.model import CameraConfig, InputConfig

INPUT_KEYS = ("snapshot",)  # pass to the input's ``sec.done(...)``
CAMERA_KEYS = ("snapshot_on", "snapshot_url")  # pass to the camera's ``sec.done(...)``
MAX_PER_ALARM = 4  # cameras photographed for one alarm: each photo competes for the link after the alarm


@dataclass(frozen=True)
class SnapshotsConfig:
    """Which cameras each input photographs, and the size limits of every photo (validated)."""

    max_kb: int
    max_mb: float
    width: int
    height: int
    quality: int
    triggers: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (input name, camera names in order)
    urls: tuple[tuple[str, str], ...] = ()  # (camera name, still URL) for cameras whose still is not ``url``

    def cameras_for(self, input_name: str) -> tuple[str, ...]:
        """The cameras to photograph when ``input_name`` raises a real alarm, first named first."""
        return next((cams for name, cams in self.triggers if name == input_name), ())

    def still_url(self, camera: CameraConfig) -> str | None:
        """Where an HTTP GET fetches this camera's still; None for a ``picamera2`` camera."""
        override = next((url for name, url in self.urls if name == camera.name), None)
        if override is not None:
            return override
        return camera.url if camera.kind == "http_snapshot" else None

    @property
    def enabled(self) -> bool:
        return bool(self.triggers)


NO_SNAPSHOTS = SnapshotsConfig(max_kb=400, max_mb=50.0, width=1280, height=720, quality=80)
"""A config without photos (the defaults of ``parse_snapshot_config``, no triggers)."""


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        raise Invalid(f"expected a list of names like [{value}], got the single name {value!r}; put it in [ ]")
    if not isinstance(value, MarkedList):
        raise Invalid(f"expected a list of names, got {value!r}")
    names = [topic_id(v) for v in value]
    if len(set(names)) != len(names):
        raise Invalid(f"a name is listed twice in {names}")
    return names


_still_url = url_check(("http", "https"), "http://host/snapshot.jpg", "the camera's username and password_file")


def _unknown(name: str, known: Sequence[str], what: str) -> str:
    import difflib  # noqa: PLC0415 - only a config with a mistake pays for it

    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if hint:
        return f"no {what} named '{name}'; did you mean '{hint[0]}'?"
    return f"no {what} named '{name}'; configured: {', '.join(known) or 'none'}"


def parse_snapshot_config(
    root: Section,
    inputs: Sequence[tuple[InputConfig, Section]],
    cameras: Sequence[tuple[CameraConfig, Section]],
) -> SnapshotsConfig:
    """Read ``snapshots``, ``inputs[].snapshot`` and ``cameras[].snapshot_on/snapshot_url``.

    Call it from ``schema.build`` after the inputs and cameras are read and
    before ``root.done()``.  Problems are recorded in ``root.ctx`` as
    ``file:line: key.path: what is wrong`` like every other key; the value
    returned is then incomplete and ``build`` returns None anyway.
    """
    sizes = _sizes(root.section("snapshots"))
    by_name = {c.name: c for c, _ in cameras if c.name is not None}
    wanted: dict[str, list[str]] = {c.name: [] for c, _ in inputs if c.name is not None}
    reasons: dict[str, tuple[Section, str]] = {}  # camera → where it was first asked for
    input_names = list(wanted)
    _from_inputs(inputs, by_name, wanted, reasons)
    urls = _from_cameras(cameras, input_names, wanted, reasons)
    _check_rtsp_stills(by_name, {name for name, _ in urls}, reasons)
    _check_per_alarm(inputs, wanted)
    return SnapshotsConfig(
        **sizes,
        triggers=tuple((name, tuple(cams)) for name, cams in wanted.items() if cams),
        urls=tuple(urls),
    )


def _sizes(sec: Section) -> dict[str, Any]:
    """The ``snapshots`` section's size limits, defaults filled in (None where a value is wrong)."""
    max_mb = sec.get("max_mb", number(1, 100000, "MiB"), 50.0)
    max_kb = sec.get("max_kb", integer(16, 16384, "KiB"), 400)
    if max_kb is not None and max_mb is not None and max_kb * 1024 > max_mb * (1 << 20):
        sec.ctx.error(
            sec.key_line("max_kb"),
            sec.sub("max_kb"),
            f"one photo ({max_kb} KiB) must fit in the store (max_mb {max_mb:g}); lower max_kb",
        )
    sizes = {
        "max_kb": max_kb,
        "max_mb": max_mb,
        "width": sec.get("width", integer(160, 4608, "pixels"), 1280),
        "height": sec.get("height", integer(120, 3456, "pixels"), 720),
        "quality": sec.get("quality", integer(10, 95, "(JPEG quality)"), 80),
    }
    sec.done()
    return sizes


def _from_inputs(
    inputs: Sequence[tuple[InputConfig, Section]],
    cameras: dict[str, CameraConfig],
    wanted: dict[str, list[str]],
    reasons: dict[str, tuple[Section, str]],
) -> None:
    """Add each input's ``snapshot`` list to ``wanted`` (input → cameras); unknown cameras are errors."""
    for icfg, isec in inputs:
        for cam in isec.get("snapshot", _names, []):
            if cam not in cameras:
                isec.ctx.error(isec.key_line("snapshot"), isec.sub("snapshot"), _unknown(cam, list(cameras), "camera"))
                continue
            wanted.setdefault(icfg.name, []).append(cam)
            reasons.setdefault(cam, (isec, "snapshot"))


def _from_cameras(
    cameras: Sequence[tuple[CameraConfig, Section]],
    input_names: list[str],
    wanted: dict[str, list[str]],
    reasons: dict[str, tuple[Section, str]],
) -> list[tuple[str, str]]:
    """Merge each camera's ``snapshot_on`` into ``wanted``; return the ``snapshot_url`` overrides."""
    urls: list[tuple[str, str]] = []
    for ccfg, csec in cameras:
        url = csec.get("snapshot_url", _still_url, None)
        if url is not None and ccfg.kind == "picamera2":
            csec.ctx.error(
                csec.key_line("snapshot_url"),
                csec.sub("snapshot_url"),
                "a picamera2 camera takes its still itself; remove snapshot_url",
            )
        elif url is not None:
            urls.append((ccfg.name, url))
        for name in csec.get("snapshot_on", _names, []):
            if name not in wanted:
                csec.ctx.error(
                    csec.key_line("snapshot_on"), csec.sub("snapshot_on"), _unknown(name, input_names, "input")
                )
                continue
            if ccfg.name not in wanted[name]:
                wanted[name].append(ccfg.name)
            reasons.setdefault(ccfg.name, (csec, "snapshot_on"))
    return urls


def _check_rtsp_stills(
    cameras: dict[str, CameraConfig], has_url: set[str], reasons: dict[str, tuple[Section, str]]
) -> None:
    """An ``rtsp`` camera asked for a still must have a ``snapshot_url``: the stream itself is not one."""
    for cam, (where, key) in reasons.items():
        if cameras[cam].kind == "rtsp" and cam not in has_url:
            where.ctx.error(
                where.key_line(key),
                where.sub(key),
                f"camera '{cam}' is an rtsp stream and takes a still only through its snapshot_url; "
                "add snapshot_url: http://... to that camera or leave it out here",
            )


def _check_per_alarm(inputs: Sequence[tuple[InputConfig, Section]], wanted: dict[str, list[str]]) -> None:
    """At most ``MAX_PER_ALARM`` cameras per input, counted after both sides are merged."""
    for icfg, isec in inputs:
        cams = wanted.get(icfg.name, [])
        if len(cams) > MAX_PER_ALARM:
            isec.ctx.error(
                isec.key_line("snapshot") if isec.has("snapshot") else isec.line,
                isec.sub("snapshot"),
                f"at most {MAX_PER_ALARM} cameras per alarm, got {len(cams)} ({', '.join(cams)})",
            )
