"""Config fuzz: ``campus-agent check-config`` never crashes, whatever the file holds.

hypothesis builds YAML documents: the real config keys nested at random with
wrong and odd values, valid documents with random edits, raw YAML features
(tags, anchors, merge keys, several documents, deep nesting), random text and
random bytes.  The rule (architecture.md, rule 5): exit status 0, or 2 with
``file:line: key.path: what is wrong`` (or ``file: what is wrong``) lines on
stderr; never a traceback.

Most examples run in-process through ``agent.cli.main`` for speed; a handful go
through a real ``python -m agent check-config`` to show what reaches a
technician's terminal.

The bugs this fuzz found (B1-B6: tracebacks on unbuildable values, deep
nesting, odd paths, alias bombs, multi-line messages) are fixed; the tests at
the end keep them fixed, and any escape now fails the run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.config import load_config
from tests.faults.harness import REPORT, Row, count, modes
from tests.support.agentproc import ROOT

BASE: dict[str, Any] = {
    "device": {"id": "gate-north-1", "site": "main", "location": "North gate"},
    "mqtt": {
        "host": "127.0.0.1",
        "port": 1883,
        "keepalive_s": 30,
        "topic_prefix": "campus",
        "reconnect_min_s": 1,
        "reconnect_max_s": 60,
        "max_inflight": 20,
        "drain_rate_per_s": 500,
        "protocol": "5",
        "connect_timeout_s": 10,
    },
    "gpio": {"pin_factory": "mock"},
    "inputs": [
        {"name": "panic", "kind": "panic_button", "pin": 17, "contact": "normally_open", "debounce_ms": 50},
        {"name": "enclosure", "kind": "tamper", "pin": 27, "contact": "normally_closed"},
    ],
    "outputs": {"ack_led": {"pin": 22}, "buzzer": {"pin": 23, "active_high": True}, "ack_hold_s": 30},
    "heartbeat": {"interval_s": 30},
    "cameras": [{"name": "shop-cam", "kind": "http_snapshot", "url": "http://192.0.2.10/snap.jpg", "timeout_s": 3}],
    "outbox": {"path": "/var/lib/campus-agent/outbox.db", "max_mb": 200},
    "control": {"socket": "/run/campus-agent/control.sock"},
    "commands": {"rate_per_min": 60},
    "log": {"level": "info"},
}
MORE_KEYS = [
    "brokers",
    "username",
    "password_file",
    "tls",
    "client_id",
    "ca_file",
    "cert_file",
    "key_file",
    "check_hostname",
    "stuck_after_s",
    "silent",
    "fault_after_s",
    "probe_interval_s",
    "fail_after",
    "auth",
    "camera_num",
    "name",
    "kind",
    "pin",
    "host",
    "port",
    "url",
    "id",
    "site",
]
ENUMS = [
    "mock",
    "lgpio",
    "default",
    "panic_button",
    "tamper",
    "normally_open",
    "normally_closed",
    "picamera2",
    "http_snapshot",
    "rtsp",
    "basic",
    "digest",
    "debug",
    "info",
    "5",
    "3.1.1",
    "campus",
    "org/campus",
]
ODD_TEXT = [
    "",
    " ",
    "~",
    "null",
    "yes",
    "no",
    "on",
    "0x1F",
    "0o17",
    "1_000",
    "1e3",
    ".inf",
    "-.nan",
    "12:30:45",
    "2026-11-29",
    "+",
    "#",
    "a/b",
    "$SYS",
    "campus/#",
    "GATE",
    "-gate",
    "a" * 64,
    "x" * 300,
    "../../etc/passwd",
    "/dev/null",
    "/etc/shadow",
    "/proc/self/status",
    "relative/file.pem",
    "http://",
    "rtsp://cam/x",
    "http://user:pw@cam/x",
    "ftp://cam/x",
    "\t",
    "ünïcödé",
    "\u202e",
    "\U0001f6a8",
]

RAW_SNIPPETS = [
    "a: &anchor {pin: 17}\nb: *anchor\n",
    "<<: {device: {id: x}}\n",
    "x: *nowhere\n",
    "--- \n--- \n",
    "...\n",
    "%YAML 1.1\n---\n",
    "? [a, b]\n: 1\n",
    "? {a: 1}\n: 2\n",
    "1: one\n",
    "null: x\n",
    "[1, 2]\n",
    "just text\n",
    "x: 'unterminated\n",
    'x: "esc \\x00 \\u00e9"\n',
    "\tx: 1\n",
    "\ufeffdevice: {}\n",
    "x: !!set {a, b}\n",
    "x: !!binary aGVsbG8=\n",
    "x: !!str 5\n",
    "x: !!null ''\n",
    "x: !!bool yes\n",
    "x: 1e999\n",
    "x: [" * 30 + "]" * 30 + "\n",
    "inputs: [{name: p, pin: 17}, {name: p, pin: 17}]\n",
    "inputs: {name: p}\n",
    "device: [1, 2]\n",
    # these once escaped as tracebacks (bugs B1-B3, fixed)
    "x: !foo 1\n",
    "x: !!int abc\n",
    "x: !!float abc\n",
    "x: 2026-02-30\n",
    "x: !!timestamp 2026-99-99\n",
    "x: !!python/name:os.system\n",
    "<<: 5\n",
    "x: " + "[" * 1500 + "\n",
    'control: {socket: "/run/\\ud800"}\n',
]


def _leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, -1, 1, 4, 5, 27, 28, 65535, 65536, 2**31, 10**6]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.05, 0.1, 0.5, 1e-9, 1e308]),
        st.text(max_size=40),
        st.sampled_from(ENUMS + ODD_TEXT),
        st.binary(max_size=16),
    )


VALUES = st.recursive(
    _leaf(),
    lambda c: (
        st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(MORE_KEYS) | st.text(max_size=8), c, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_config(draw: st.DrawFn) -> Any:
    """The valid base with a few keys set to odd values, removed, misspelt or added."""
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    for _ in range(draw(st.integers(0, 6))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        op = draw(st.sampled_from(["set", "set", "set", "delete", "rename", "add"]))
        if op == "set":
            parent[key] = draw(VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(MORE_KEYS) | st.text(max_size=12)) or "k"] = parent.pop(key)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(MORE_KEYS) | st.text(max_size=12))] = draw(VALUES)
    return doc


def _dump(doc: Any, flow: bool, uni: bool) -> bytes:
    return yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=uni, sort_keys=False).encode("utf-8")


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(["mutated", "mutated", "mutated", "random-tree", "edited", "snippets", "text", "bytes"])
    )
    if kind == "mutated":
        return _dump(draw(mutated_config()), draw(st.booleans()), draw(st.booleans()))
    if kind == "random-tree":
        return _dump(draw(VALUES), draw(st.booleans()), draw(st.booleans()))
    if kind == "edited":  # a valid file with random character edits: typos, cut lines, stray bytes
        text = bytearray(_dump(BASE, draw(st.booleans()), True))
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(text)))
            op = draw(st.sampled_from(["insert", "delete", "replace"]))
            junk = draw(
                st.sampled_from(
                    [
                        b":",
                        b" ",
                        b"\n",
                        b"-",
                        b"[",
                        b"{",
                        b"&",
                        b"*",
                        b"!",
                        b"#",
                        b"'",
                        b'"',
                        b"\t",
                        b"\x00",
                        b"\xff",
                        b"%",
                        b"?",
                        b"|",
                        b">",
                    ]
                )
            )
            if op == "insert":
                text[pos:pos] = junk
            elif op == "delete":
                del text[pos : pos + draw(st.integers(1, 20))]
            else:
                text[pos : pos + 1] = junk
        return bytes(text)
    if kind == "snippets":
        parts = draw(st.lists(st.sampled_from(RAW_SNIPPETS), min_size=1, max_size=5))
        base = _dump(draw(mutated_config()), False, True).decode() if draw(st.booleans()) else ""
        return (base + "".join(parts)).encode("utf-8")
    if kind == "text":
        return draw(st.text(max_size=2000)).encode("utf-8")
    return draw(st.binary(max_size=2048))


# ---- known agent bugs: where their exception escapes -------------------------------------------------------


def _agent_frame(exc: BaseException) -> tuple[str, str]:
    """(file relative to the repo, function) of the deepest agent frame the exception went through."""
    last = ("?", "?")
    for fs in traceback.extract_tb(exc.__traceback__):
        p = Path(fs.filename)
        with contextlib.suppress(ValueError):
            rel = p.resolve().relative_to(ROOT)
            if rel.parts[0] == "agent":
                last = (str(rel), fs.name)
    return last


def known_bug(exc: BaseException) -> str | None:
    """Bugs B1-B6 found by this fuzz are fixed; any escape now fails the run (the frame helps the report)."""
    _agent_frame(exc)
    return None


def _check(path: Path, data: bytes, seen: Counter[str]) -> None:
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["check-config", str(path)])
    except Exception as exc:
        bug = known_bug(exc)
        if bug is None:
            raise AssertionError(f"check-config raised {type(exc).__name__}: {exc!r:.300}") from exc
        seen[bug] += 1
        return
    seen[f"exit {rc}"] += 1
    assert rc in (0, 2), f"exit status {rc}; stderr: {err.getvalue()[:500]}"
    if rc == 0:
        assert out.getvalue().startswith(f"{path}: OK"), out.getvalue()
        return
    text = err.getvalue()
    assert text.strip(), "exit 2 without a message"
    assert text.startswith(f"{path}:"), f"message does not start with the file name: {text[:300]!r}"
    for problem in re.split(rf"(?m)^(?={re.escape(str(path))}:)", text):
        body = problem.rstrip("\n")
        if "\n" not in body and "\r" not in body:
            continue
        raise AssertionError(f"a problem spans several lines (B5/B6 regression): {body[:300]!r}")
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("mode", modes())
def test_config_fuzz__check_config_exits_0_or_2_with_a_message(mode: str, tmp_path: Path) -> None:
    examples = count(mode, 200, 5000)  # short: the same examples every run (derandomized); make soak runs 5000
    path = tmp_path / "fuzz.yaml"
    seen: Counter[str] = Counter()
    t0 = time.monotonic()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=mode == "short",
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(documents())
    def fuzz(data: bytes) -> None:
        _check(path, data, seen)

    try:
        fuzz()
    finally:
        bugs = {k: v for k, v in seen.items() if k.startswith("B")}
        note = f"exit 0: {seen['exit 0']}, exit 2: {seen['exit 2']}; known bugs hit: " + (
            ", ".join(f"{k} x{v}" for k, v in sorted(bugs.items())) or "none"
        )
        REPORT.add(Row(f"config fuzz ({examples} examples)", sum(seen.values()), 0, 0, time.monotonic() - t0, note))
    assert seen["exit 0"] + seen["exit 2"] > examples // 2, f"most examples hit known bugs: {seen}"


# ---- the same through a real process: what a technician sees -----------------------------------------------


def _cli(path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


SUBPROCESS_DOCS = {
    "valid": _dump(BASE, False, True),
    "unknown-key": _dump({**BASE, "heartbeet": {"interval_s": 30}}, False, True),
    "wrong-types": _dump({**BASE, "mqtt": {**BASE["mqtt"], "port": "eighty", "keepalive_s": 1.5}}, False, True),
    "broken-yaml": b"device: {id: gate\nmqtt: [\n",
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "not-a-mapping": b"- just\n- a list\n",
}


@pytest.mark.parametrize("name", sorted(SUBPROCESS_DOCS))
def test_config_fuzz__real_process_prints_no_traceback(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(SUBPROCESS_DOCS[name])
    r = _cli(path)
    assert r.returncode == (0 if name == "valid" else 2), r
    assert "Traceback" not in r.stderr
    if r.returncode == 2:
        assert all(ln.startswith(f"{path}:") for ln in r.stderr.splitlines()), r.stderr


def test_config_fuzz__real_process_on_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing.yaml"):
        r = _cli(path)
        assert r.returncode == 2, r
        assert "Traceback" not in r.stderr
        assert r.stderr.startswith(f"{path}:"), r.stderr


# ---- agent bugs found by the fuzz (B1-B6), fixed: these keep them fixed -----------------------------------

B1_DOCS = {
    "unknown-tag": "device: {id: !foo gate, site: main}\n",
    "bad-int-tag": "mqtt: {host: h, port: !!int eighty}\n",
    "impossible-date": "device: {id: gate, site: main, location: 2026-02-30}\n",
    "python-tag": "device: {id: !!python/object/apply:os.getpid x, site: main}\n",
    "bad-merge": "mqtt:\n  <<: 5\n  host: h\n",
}


@pytest.mark.parametrize("name", sorted(B1_DOCS))
def test_config_bug_b1__unconstructible_value_gives_file_line_not_traceback(name: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(B1_DOCS[name])
    r = _cli(path)
    assert "Traceback" not in r.stderr, r.stderr[-600:]
    assert r.returncode == 2
    assert r.stderr.startswith(f"{path}:")


def test_config_bug_b2__deep_nesting_gives_a_message_not_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("device: " + "[" * 3000 + "\n")
    r = _cli(path)
    assert "Traceback" not in r.stderr, r.stderr[-600:]
    assert r.returncode == 2
    assert r.stderr.startswith(f"{path}:")


def test_config_bug_b3__unencodable_socket_path_gives_file_line_not_traceback(tmp_path: Path) -> None:
    path = tmp_path / "sur.yaml"
    path.write_text('device: {id: gate, site: main}\nmqtt: {host: h}\ncontrol: {socket: "/run/\\ud800.sock"}\n')
    r = _cli(path)
    assert "Traceback" not in r.stderr, r.stderr[-600:]
    assert r.returncode == 2
    assert r.stderr.startswith(f"{path}:")


def test_config_bug_b5__control_character_message_is_file_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"device:\n  id: gate\n  site: ma\x00in\n")
    r = _cli(path)
    assert r.returncode == 2, r
    assert all(ln.startswith(f"{path}:") for ln in r.stderr.splitlines()), r.stderr
    assert r.stderr.startswith(f"{path}:3:"), r.stderr


@pytest.mark.parametrize(
    "doc",
    [
        'device: {id: gate, site: main, "lo\\ncation": x}\nmqtt: {host: h}\n',
        'device: {id: gate, site: main}\nmqtt: {host: h, username: u, password_file: "/no\\nsuch"}\n',
    ],
    ids=["key", "path"],
)
def test_config_bug_b6__line_break_in_key_or_path_stays_on_one_line(doc: str, tmp_path: Path) -> None:
    path = tmp_path / "nl.yaml"
    path.write_text(doc)
    r = _cli(path)
    assert r.returncode == 2, r
    assert all(ln.startswith(f"{path}:") for ln in r.stderr.splitlines()), r.stderr


def _laughs(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_config_bug_b4__nested_aliases_are_answered_at_once(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(7))
    assert path.stat().st_size < 500
    t = time.monotonic()
    with pytest.raises(Exception) as caught:
        load_config(path)
    took = time.monotonic() - t
    assert type(caught.value).__name__ == "ConfigError"
    # expanded, seven levels are 10**7 values (minutes and gigabytes); shared, a few dozen
    assert took < 5.0, f"a {path.stat().st_size}-byte config took {took:.1f} s to check"
