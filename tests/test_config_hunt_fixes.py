"""Config problems a technician meets at a gate: each names the file, the line, the key and the fix.

The wrong file passed as config (a log), a file saved in latin-1, a tab from an
editor, YAML 1.1 reading ``on`` or ``1:30.0`` otherwise than written, a password
saved by Windows Notepad.
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import doctor_mqtt, load_config, load_control_socket
from agent.config.marked import MAX_BYTES, MAX_NODES
from agent.errors import ConfigError

GOOD = """\
device: {id: gate-north-1, site: main, location: North gate}
mqtt:
  host: 127.0.0.1
gpio: {pin_factory: mock}
inputs:
  - {name: panic, pin: 17}
"""
PASSWORD = (
    "host: 127.0.0.1\n  username: u\n  password_file: mqtt.pass\n  allow_plaintext_password: true\n"
    "  tls: {ca_file: ca.crt}"
)


def _write(tmp_path: Path, text: str | bytes, name: str = "gate.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(textwrap.dedent(text).encode() if isinstance(text, str) else text)
    return p


def _problems(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


def test_load__file_far_bigger_than_a_config_is_refused_before_parsing(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    line = "Dec  1 04:00:01 gate-pi kernel[7]: usb 1-1.2: new device number 7\n"
    log.write_text(line * (MAX_BYTES // len(line) + 1))
    with pytest.raises(ConfigError, match=r"syslog: larger than 1024 KiB.*is this the right file"):
        load_control_socket(log)


def test_load__too_many_values_stop_composing_early_and_name_the_file(tmp_path: Path) -> None:
    items = 3 * MAX_NODES  # under MAX_BYTES: only the node count stops it
    path = _write(tmp_path, GOOD + "extra:\n" + "".join(f"  - {i}\n" for i in range(items)))
    m = re.search(r"gate\.yaml:(\d+): more than 20000 values.*is this the right file", _problems(path))
    assert m is not None
    assert int(m.group(1)) < MAX_NODES + 20  # where composing stopped, not after the whole file


def test_load__non_utf8_byte_names_its_line(tmp_path: Path) -> None:
    raw = GOOD.encode().replace(b"North gate", b"Entr\xe9e nord")
    assert _problems(_write(tmp_path, raw)).startswith(
        f"{tmp_path / 'gate.yaml'}:1: not UTF-8 (byte 0xe9 in column 54); save the file as UTF-8"
    )


def test_load__config_with_a_bom_is_read(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())).device.id == "gate-north-1"


def test_load__tab_indent_says_indent_with_spaces(tmp_path: Path) -> None:
    msg = _problems(_write(tmp_path, GOOD.replace("  host: 127.0.0.1", "\thost: 127.0.0.1")))
    assert re.match(r".*gate\.yaml:3: not valid YAML: .*; indent with spaces, not tabs$", msg), msg


def test_load__key_on_is_told_to_be_quoted(tmp_path: Path) -> None:
    msg = _problems(_write(tmp_path, GOOD + "on: 1\n"))
    assert "gate.yaml:7: (top level): YAML reads the key on as True, not as a word; quote it: 'on':" in msg


@pytest.mark.parametrize("written", ["1:30", "1:30.0"])
def test_load__base_60_numbers_are_refused_alike(tmp_path: Path, written: str) -> None:
    msg = _problems(_write(tmp_path, GOOD + f"heartbeat:\n  interval_s: {written}\n"))
    assert f"gate.yaml:8: heartbeat.interval_s: YAML reads {written} as the number 90" in msg
    assert "not as written; write it in decimal" in msg


def test_load__number_of_thousands_of_digits_is_too_large(tmp_path: Path) -> None:
    msg = _problems(_write(tmp_path, GOOD.replace("pin: 17", "pin: 1" + "0" * 5000)))
    assert msg.endswith("gate.yaml:6: inputs[0].pin: number too large (5001 digits); write the value this key expects")


def test_check_config__missing_file_advice_is_a_command_that_works(tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["check-config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found; give the right path (check-config FILE," in err.getvalue()
    assert "-c FILE" not in err.getvalue()  # check-config has no -c


def _doctor_files(tmp_path: Path, key_mode: int) -> Path:
    for name in ("ca.crt", "doctor.crt", "doctor.key"):
        (tmp_path / name).write_text("x")
        (tmp_path / name).chmod(0o644)
    (tmp_path / "doctor.key").chmod(key_mode)
    return _write(
        tmp_path,
        GOOD.replace("host: 127.0.0.1", "host: 127.0.0.1\n  tls: {ca_file: ca.crt}")
        + "doctor:\n  cert_file: doctor.crt\n  key_file: doctor.key\n",
    )


def test_doctor_mqtt__problem_names_its_line(tmp_path: Path) -> None:
    cfg = load_config(_doctor_files(tmp_path, 0o644))
    with pytest.raises(ConfigError) as err:
        doctor_mqtt(cfg)
    assert str(err.value).startswith(f"{tmp_path / 'gate.yaml'}:10: doctor.key_file: ")
    assert str(err.value).endswith(
        f"readable by others (mode 0644); it holds a secret: run 'chmod 600 {tmp_path}/doctor.key'"
    )


def test_doctor_mqtt__password_file_saved_by_notepad_gives_the_password(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "doctor.pass").write_bytes(b"\xef\xbb\xbfs3cret-pass\r\n")
    (tmp_path / "doctor.pass").chmod(0o600)
    doctor = "doctor:\n  username: main/doctor\n  password_file: doctor.pass\n"
    cfg = load_config(_write(tmp_path, GOOD.replace("host: 127.0.0.1", "host: h\n  tls: {ca_file: ca.crt}") + doctor))
    password = doctor_mqtt(cfg).password
    assert password is not None
    assert password.reveal() == "s3cret-pass"


def test_load__mqtt_password_file_saved_by_notepad_gives_the_password(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "mqtt.pass").write_bytes(b"\xef\xbb\xbfs3cret-pass\r\n")
    (tmp_path / "mqtt.pass").chmod(0o600)
    cfg = load_config(_write(tmp_path, GOOD.replace("host: 127.0.0.1", PASSWORD)))
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.reveal() == "s3cret-pass"
