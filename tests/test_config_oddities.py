"""Configs that are valid YAML but say something other than what the technician meant (a hunt found each).

Each used to load silently, crash with a traceback, or be reported with a
wrong or doubled problem; now each is refused with file, line, key and fix,
or read as YAML says.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from agent.errors import ConfigError

GOOD = """\
device: {id: gate-1, site: main}
mqtt:
  host: 127.0.0.1
gpio: {pin_factory: mock}
inputs:
  - {name: panic, pin: 17}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gate.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    return caught.value.problems


@pytest.mark.parametrize(
    ("written", "read_as", "fix"),
    [
        ("017", 15, "write 17 without the leading 0"),
        ("0x11", 17, "write it in decimal"),
        ("1:05", 65, "write it in decimal"),
    ],
)
def test_config__a_pin_yaml_reads_in_another_base_is_refused(
    tmp_path: Path, written: str, read_as: int, fix: str
) -> None:
    """``pin: 017`` armed GPIO15 (YAML 1.1 octal): the button on GPIO17 was never read."""
    problems = _problems(tmp_path, GOOD.replace("pin: 17", f"pin: {written}"))
    assert len(problems) == 1, problems
    assert (
        f"gate.yaml:6: inputs[0].pin: YAML reads {written} as the number {read_as}, not as written; {fix}"
        in (problems[0])
    )


def test_config__plain_and_quoted_numbers_still_read(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, GOOD.replace("pin: 17", "pin: 0, debounce_ms: +20") + "heartbeat: {interval_s: 1_0}\n")
    )
    assert (cfg.inputs[0].pin, cfg.inputs[0].debounce_ms, cfg.heartbeat.interval_s) == (0, 20, 10)
    cfg = load_config(_write(tmp_path, GOOD.replace("{id: gate-1", "{id: '017'")))
    assert cfg.device.id == "017"


@pytest.mark.parametrize(
    ("key", "value", "shown"), [("client_id", '"main/gate-1\\0"', "'\\x00'"), ("username", "|\n    ops\n", "'\\n'")]
)
def test_config__an_mqtt_string_with_a_control_character_is_refused(
    tmp_path: Path, key: str, value: str, shown: str
) -> None:
    """mosquitto closes such a connection before its CONNACK, every time: alarms stayed buffered forever."""
    text = GOOD.replace("  host: 127.0.0.1", f"  host: 127.0.0.1\n  {key}: {value}")
    problems = _problems(tmp_path, text)
    assert len(problems) == 1, problems
    assert f"gate.yaml:4: mqtt.{key}: contains control characters ({shown}); write it on one line" in problems[0]


@pytest.mark.parametrize(
    "camera",
    [
        "{name: cam, kind: http_snapshot, url: 'http://[cam/snap.jpg'}",
        "{name: cam, kind: http_snapshot, url: 'http://cam:99999/snap.jpg'}",
        "{name: cam, kind: rtsp, url: 'rtsp://cam:http/s'}",
        "{name: cam, kind: rtsp, url: 'rtsp://cam/s', snapshot_url: 'http://[cam/x.jpg'}",
    ],
)
def test_config__a_camera_url_with_no_usable_host_or_port_is_a_problem_not_a_traceback(
    tmp_path: Path, camera: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, GOOD + f"cameras:\n  - {camera}\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "gate.yaml:8: cameras[0]." in err
    assert "expected a URL like" in err


def test_config__a_refused_camera_url_never_shows_its_password(tmp_path: Path) -> None:
    for url in (
        "htp://admin:hunter2@cam/x.jpg",
        "http://admin:hunter2@[cam/x.jpg",
        "http:admin:hunter2@cam/x.jpg",
        "http//admin:hunter2@cam/x.jpg",
        "http://admin:hunter2@cam:0/x.jpg",
    ):
        problems = _problems(tmp_path, GOOD + f"cameras:\n  - {{name: cam, kind: http_snapshot, url: '{url}'}}\n")
        assert "hunter2" not in "".join(problems), problems


def test_config__a_tls_section_with_every_key_commented_out_still_means_tls(tmp_path: Path) -> None:
    """It meant clear text on port 1883, silently; the docs say a tls section means TLS."""
    text = GOOD.replace(
        "  host: 127.0.0.1\n", "  host: broker.campus.lan\n  tls:\n    # ca_file: /etc/campus-agent/ca.crt\n"
    )
    cfg = load_config(_write(tmp_path, text))
    assert cfg.mqtt.tls is not None
    assert cfg.mqtt.brokers[0].port == 8883


def test_config__keys_written_beside_a_merge_override_the_merged_ones(tmp_path: Path) -> None:
    """YAML's merge key: ``<<: *btn`` then ``name: desk`` was called a duplicate key."""
    text = GOOD.replace(
        "  - {name: panic, pin: 17}\n",
        "  - &btn {name: panic, pin: 17, debounce_ms: 20}\n  - <<: *btn\n    name: desk\n    pin: 5\n",
    )
    cfg = load_config(_write(tmp_path, text))
    assert [(i.name, i.pin, i.debounce_ms) for i in cfg.inputs] == [("panic", 17, 20), ("desk", 5, 20)]
    doubled = text.replace("    pin: 5\n", "    pin: 5\n    pin: 6\n")
    assert any("inputs[1].pin: duplicate key (first given on line" in p for p in _problems(tmp_path, doubled))


def test_config__an_unreadable_value_is_reported_once_not_also_as_missing(tmp_path: Path) -> None:
    problems = _problems(tmp_path, GOOD.replace("pin: 17", "pin: !!int seventeen"))
    assert len(problems) == 1, problems
    assert "inputs[0].pin: cannot read this value" in problems[0]


def test_config__a_file_that_is_a_list_names_the_top_level(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "- device\n- mqtt\n")
    assert "gate.yaml:1: (top level): expected a mapping of keys, got a list" in problems[0], problems


def test_config__two_pi_cameras_on_one_camera_num_are_refused(tmp_path: Path) -> None:
    text = GOOD + "cameras:\n  - {name: front, kind: picamera2}\n  - {name: back, kind: picamera2, camera_num: 0}\n"
    problems = _problems(tmp_path, text)
    assert len(problems) == 1, problems
    assert "gate.yaml:9: cameras[1].camera_num: camera_num 0 is already cameras[0]" in problems[0]
    load_config(_write(tmp_path, text.replace("camera_num: 0", "camera_num: 1")))


def test_config__an_unreadable_section_or_list_is_reported_once(tmp_path: Path) -> None:
    for text in (
        GOOD + "heartbeat: !!int soon\n",
        GOOD.replace("inputs:\n  - {name: panic, pin: 17}\n", "inputs: !!int x\n"),
    ):
        problems = _problems(tmp_path, text)
        assert len(problems) == 1, problems
        assert "cannot read this value" in problems[0]
