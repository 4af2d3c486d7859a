"""Configuration: defaults, and every kind of mistake named with file, line and key."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from agent.config.model import Contact, InputKind
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
device: {id: gate-north-1, site: main}
mqtt:
  host: 127.0.0.1
gpio: {pin_factory: mock}
inputs:
  - {name: panic, pin: 17}
"""


def _write(tmp_path: Path, text: str, name: str = "gate.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_load__minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.mqtt.brokers[0].port == 1883
    assert cfg.mqtt.keepalive_s == 30
    assert cfg.mqtt.topic_prefix == "campus"
    assert cfg.mqtt.client_id == "main/gate-north-1"
    assert cfg.mqtt.protocol == "auto"
    assert cfg.inputs[0].kind is InputKind.PANIC_BUTTON
    assert cfg.inputs[0].contact is Contact.NORMALLY_OPEN
    assert cfg.inputs[0].debounce_ms == 50
    assert cfg.heartbeat.interval_s == 30
    assert cfg.outbox.path == Path("/var/lib/campus-agent/outbox.db")
    assert cfg.outbox.max_mb == 200
    assert cfg.control.socket == Path("/run/campus-agent/control.sock")
    assert cfg.topic_root == "campus/main/gate-north-1"


def test_load__tamper_defaults_to_normally_closed_and_tls_port_8883(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    cfg = load_config(
        _write(
            tmp_path,
            GOOD.replace("host: 127.0.0.1", "host: b\n  tls: {ca_file: ca.crt}")
            + "  - {name: lid, kind: tamper, pin: 27}\n",
        )
    )
    assert cfg.inputs[1].contact is Contact.NORMALLY_CLOSED
    assert cfg.mqtt.brokers[0].port == 8883
    assert cfg.mqtt.tls is not None
    assert cfg.mqtt.tls.ca_file == ca
    assert cfg.mqtt.tls.check_hostname is True


def test_load__brokers_list_for_failover(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, GOOD.replace("  host: 127.0.0.1", "  brokers: [{host: a.lan}, {host: b.lan, port: 1884}]"))
    )
    assert [str(b) for b in cfg.mqtt.brokers] == ["a.lan:1883", "b.lan:1884"]


# (case, yaml text, expected line, expected message regex)
BAD = [
    (
        "pin_not_a_number",
        GOOD.replace("pin: 17", "pin: seventeen"),
        6,
        r"inputs\[0\]\.pin: expected a BCM pin number 0-27, got 'seventeen'",
    ),
    (
        "pin_out_of_range",
        GOOD.replace("pin: 17", "pin: 40"),
        6,
        r"inputs\[0\]\.pin: expected a BCM pin number 0-27, got 40",
    ),
    (
        "unknown_key_did_you_mean",
        GOOD.replace("  host:", "  hots: x\n  host:"),
        3,
        r"mqtt\.hots: unknown key; did you mean 'host'\?",
    ),
    (
        "unknown_top_level_key",
        GOOD + "heartbeats: {interval_s: 10}\n",
        7,
        r"heartbeats: unknown key; did you mean 'heartbeat'\?",
    ),
    (
        "duplicate_input_name",
        GOOD + "  - {name: panic, pin: 18}\n",
        7,
        r"inputs\[1\]\.name: name 'panic' is already used by inputs\[0\]",
    ),
    (
        "duplicate_pin",
        GOOD + "  - {name: desk, pin: 17}\n",
        7,
        r"inputs\[1\]\.pin: pin 17 is already used by inputs\[0\] \(panic\)",
    ),
    (
        "output_pin_clash",
        GOOD + "outputs: {ack_led: {pin: 17}}\n",
        7,
        r"outputs\.ack_led\.pin: pin 17 is already used by inputs\[0\]",
    ),
    (
        "device_id_with_slash",
        GOOD.replace("gate-north-1", "gate/north"),
        1,
        r"device\.id: .*'/' separates topic levels",
    ),
    (
        "site_with_wildcard",
        GOOD.replace("site: main", "site: '#'"),
        1,
        r"device\.site: .*'\+' and '#' are MQTT wildcards",
    ),
    ("upper_case_id", GOOD.replace("gate-north-1", "Gate-North"), 1, r"device\.id: expected lower-case"),
    ("empty_id", GOOD.replace("gate-north-1", "''"), 1, r"device\.id: expected lower-case"),
    (
        "missing_device",
        GOOD.replace("device: {id: gate-north-1, site: main}\n", ""),
        1,
        r"device\.id: required key is missing",
    ),
    (
        "wrong_type_keepalive",
        GOOD.replace("  host: 127.0.0.1", "  host: 127.0.0.1\n  keepalive_s: soon"),
        4,
        r"mqtt\.keepalive_s: expected seconds, 5-1200, got 'soon'",
    ),
    (
        "keepalive_zero_disables_detection",
        GOOD.replace("  host: 127.0.0.1", "  host: h\n  keepalive_s: 0"),
        4,
        r"mqtt\.keepalive_s: expected seconds, 5-1200, got 0",
    ),
    (
        "bad_contact_did_you_mean",
        GOOD.replace("pin: 17}", "pin: 17, contact: normaly_open}"),
        6,
        r"inputs\[0\]\.contact: expected one of normally_open, normally_closed, got 'normaly_open'; "
        r"did you mean 'normally_open'\?",
    ),
    (
        "bad_pin_factory",
        GOOD.replace("pin_factory: mock", "pin_factory: lgpoi"),
        4,
        r"gpio\.pin_factory: .*did you mean 'lgpio'\?",
    ),
    (
        "number_where_text",
        GOOD.replace("host: 127.0.0.1", "host: 10"),
        3,
        r"mqtt\.host: expected text, got 10; did you forget quotes",
    ),
    (
        "missing_password_file",
        GOOD.replace("host: 127.0.0.1", "host: h\n  username: u\n  password_file: nope.pass"),
        5,
        r"mqtt\.password_file: file .*nope\.pass not found",
    ),
    (
        "duplicate_key",
        GOOD.replace("gpio: {pin_factory: mock}", "gpio: {pin_factory: mock}\ngpio: {}"),
        5,
        r"gpio: duplicate key \(first given on line 4\)",
    ),
    (
        "inputs_not_a_list",
        GOOD.replace("inputs:\n  - {name: panic, pin: 17}", "inputs: {name: panic}"),
        5,
        r"inputs: expected a list, got a mapping",
    ),
    (
        "camera_url_scheme",
        GOOD + "cameras: [{name: c, kind: rtsp, url: 'http://x/'}]\n",
        7,
        r"cameras\[0\]\.url: expected a URL like rtsp://host/",
    ),
    (
        "camera_password_in_url",
        GOOD + "cameras: [{name: c, kind: rtsp, url: 'rtsp://u:p@x/'}]\n",
        7,
        r"cameras\[0\]\.url: do not put a password in the URL",
    ),
    ("not_yaml", "device: {id: [\n", 2, r"not valid YAML"),
    (
        "reconnect_min_above_max",
        GOOD.replace("  host: 127.0.0.1", "  host: h\n  reconnect_min_s: 30\n  reconnect_max_s: 10"),
        4,
        r"mqtt\.reconnect_min_s: must not exceed reconnect_max_s \(10\)",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_load__invalid(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    first = next((p for p in err.value.problems if re.search(message, p)), None)
    assert first is not None, err.value.problems
    assert first.startswith(f"{path}:{line}: "), first


def test_load__every_problem_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("pin: 17", "pin: 99").replace("  host:", "  hots: x\n  host:")
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert len(err.value.problems) == 2


def test_load__secret_readable_by_others_is_refused_with_chmod(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    path = _write(
        tmp_path,
        GOOD.replace(
            "host: 127.0.0.1", "host: h\n  username: u\n  password_file: mqtt.pass\n  allow_plaintext_password: true"
        ),
    )
    with pytest.raises(ConfigError, match=rf"readable by others \(mode 0644\).*run 'chmod 600 {secret}'"):
        load_config(path)
    secret.chmod(0o600)
    cfg = load_config(path)
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.reveal() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_load__missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")


def test_load__socket_path_too_long(tmp_path: Path) -> None:
    long = "/tmp/" + "x" * 120 + ".sock"
    with pytest.raises(ConfigError, match=r"control\.socket: UNIX socket paths stop at 107 bytes"):
        load_config(_write(tmp_path, GOOD + f"control: {{socket: {long}}}\n"))


@pytest.mark.parametrize("name", ["gate.yaml", "shop.yaml", "demo.yaml"])
def test_examples__are_valid(tmp_path: Path, name: str) -> None:
    """The shipped examples load once the files they name exist (paths moved into tmp)."""
    text = (ROOT / "config" / name).read_text().replace("/etc/campus-agent/", f"{tmp_path}/")
    for secret in ("mqtt.pass", "client.key", "shop-cam.pass", "ca.crt", "client.crt", "doctor.crt", "doctor.key"):
        p = tmp_path / secret
        p.write_text("x\n")
        p.chmod(0o600)
    path = tmp_path / name
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.inputs


def test_check_config__exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, GOOD, "good.yaml")
    bad = _write(tmp_path, GOOD.replace("pin: 17", "pin: seventeen"), "bad.yaml")
    assert main(["check-config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:6: inputs[0].pin: expected a BCM pin number 0-27, got 'seventeen'" in err


def test_run__refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = _write(tmp_path, GOOD.replace("pin: 17", "pin: seventeen"))
    r = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 2
    assert f"{bad}:6: inputs[0].pin:" in r.stderr
    assert "Traceback" not in r.stderr
