"""`make demo`: a broker on loopback, the agent on simulated pins, and a live view.

Starts mosquitto on a free 127.0.0.1 port, runs `campus-agent run` on
config/demo.yaml (pointed at that broker), prints every message the broker
receives as one readable line, and presses the simulated panic button every
few seconds and whenever you press Enter.  Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.control_client import request  # noqa: E402
from agent.errors import ControlError  # noqa: E402
from agent.stopflag import StopFlag  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"demo: mosquitto did not start on 127.0.0.1:{port}")


def describe(topic: str, doc: dict[str, Any], arrived: float) -> str:
    """One line per message, the way an operator wants to read it."""
    now = dt.datetime.fromtimestamp(arrived, tz=dt.UTC).astimezone().strftime("%H:%M:%S.%f")[:-3]
    who = "/".join(topic.split("/")[1:3])
    if "/event/" in topic:
        try:
            ts = dt.datetime.fromisoformat(doc["ts"]).timestamp()
            delay = f"arrived {(arrived - ts) * 1000:.0f} ms after it happened"
        except (KeyError, ValueError):
            delay = ""
        test = " TEST" if doc.get("test") else ""
        return (
            f"{now}  EVENT   {who}  {doc.get('type'):<14} from {doc.get('source'):<10} "
            f"seq {doc.get('seq')}{test}  {delay}"
        )
    if topic.endswith("/status"):
        if doc.get("state") == "offline":
            return f"{now}  STATUS  {who}  OFFLINE ({doc.get('reason')})"
        inputs = ", ".join(f"{n}={i['state']}" for n, i in doc.get("inputs", {}).items())
        ob = doc.get("outbox", {})
        return f"{now}  STATUS  {who}  online; outbox {ob.get('pending')} pending; inputs {inputs}"
    return f"{now}  {topic}  {json.dumps(doc)[:120]}"


def live_view(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"demo-view-{os.getpid()}")

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(m.payload)
        except ValueError:
            doc = {"raw": m.payload[:80].decode(errors="replace")}
        print(describe(m.topic, doc, time.time()), flush=True)

    c.on_connect = lambda cl, *_: cl.subscribe("campus/#", qos=1)
    c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    return c


def write_configs(work: Path, port: int) -> tuple[Path, Path]:
    """A mosquitto config for loopback and config/demo.yaml pointed at it; return both paths."""
    conf = work / "mosquitto.conf"
    lines = ["persistence false", "log_dest none", f"listener {port} 127.0.0.1", "allow_anonymous true"]
    if os.geteuid() == 0:
        lines.insert(0, "user root")
    conf.write_text("\n".join(lines) + "\n")
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["mqtt"]["port"] = port
    cfg["outbox"]["path"] = str(work / "outbox.db")
    cfg["control"]["socket"] = str(work / "control.sock")
    cfg_path = work / "agent.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return conf, cfg_path


def start_agent(cfg_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`campus-agent run` on the demo config, its output in ``log_path``; return once it answers ``status``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CAMPUS_AGENT_ALLOW_ROOT="1")  # a dev box or container as root
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(cfg_path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sock = cfg_path.parent / "control.sock"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            request(sock, "status", timeout=1)
            break
        except ControlError:
            time.sleep(0.1)
    return proc


def press(sock: Path, reason: str) -> None:
    """Press and release the simulated panic button through the control socket."""
    try:
        request(sock, "simulate", input="panic", action="press")
        time.sleep(0.3)  # a human press lasts a moment; debounce is 50 ms
        request(sock, "simulate", input="panic", action="release")
        print(f"demo: pressed panic ({reason})", flush=True)
    except ControlError as exc:
        print(f"demo: could not press: {exc}", flush=True)


def press_on_enter(sock: Path) -> None:
    """When a person is at the terminal, every Enter presses the button."""
    if not sys.stdin.isatty():
        return

    def keys() -> None:
        for _line in sys.stdin:
            press(sock, "Enter")

    threading.Thread(target=keys, daemon=True).start()


def press_every(
    sock: Path, every: float, duration: float, procs: list[subprocess.Popen[bytes]], stop: StopFlag
) -> None:
    """Press every ``every`` s until ``stop``, ``duration`` s (0: no limit), or a child exits."""
    started = time.monotonic()
    next_press = started + 2.0
    while not stop.is_set():
        now = time.monotonic()
        if duration and now - started >= duration:
            return
        if any(p.poll() is not None for p in procs):
            print("demo: a child process exited; stopping", flush=True)
            return
        if now >= next_press:
            press(sock, "timer")
            next_press = now + every
        stop.wait(0.1)


def stop_all(procs: list[subprocess.Popen[bytes]], view: mqtt.Client | None) -> None:
    """Terminate the children, newest first (the agent before its broker), and drop the live view."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    if view is not None:
        view.disconnect()
        view.loop_stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=5.0, help="seconds between automatic presses")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    args = ap.parse_args()

    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        raise SystemExit(
            "demo: mosquitto is not installed; run `make demo` (it installs it) or apt-get install mosquitto"
        )
    work = ROOT / "demo-run"  # kept after the demo so agent.log can be read
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    port = free_port()
    conf, cfg_path = write_configs(work, port)
    sock = cfg_path.parent / "control.sock"

    procs: list[subprocess.Popen[bytes]] = []
    stop = StopFlag()  # a threading.Event set from a signal handler can deadlock its own wait
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    view = None
    try:
        procs.append(subprocess.Popen([mosquitto, "-c", str(conf)]))
        wait_port(port)
        print(f"demo: mosquitto on 127.0.0.1:{port}; agent config {cfg_path}", flush=True)
        view = live_view(port)
        procs.append(start_agent(cfg_path, work / "agent.log"))
        print(f"demo: agent running; its log is {work / 'agent.log'}", flush=True)
        print(
            f"demo: pressing the simulated panic button every {args.every:g} s; press Enter to press it now, "
            "Ctrl-C to stop",
            flush=True,
        )
        press_on_enter(sock)
        press_every(sock, args.every, args.duration, procs, stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all(procs, view)
        print(f"demo: stopped; the agent's log is in {work / 'agent.log'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
