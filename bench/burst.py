"""Burst: 1,000 presses within one second on 8 inputs, through an agent running in this process.

Run as its own process by ``bench/run.py`` (a fresh interpreter, so the
module check at the end sees only what the agent imported).  The agent is the
real :class:`agent.daemon.Agent` on gpiozero's mock pins; one driver thread
per input plays gpiozero's callback thread and toggles its pin.  Without
changing ``agent/``, two things are timed:

* edge → durable: a wrapper around ``Outbox.put`` takes the time each panic
  event's put returns (committed) minus the event's ``mono_ms`` edge stamp;
* the pin toggle itself: how long gpiozero's callback thread is held.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import agent_config, remove_socket_dirs, summary  # noqa: E402, I001 - first: it puts the agent under test on sys.path
from agent.config import load_config  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from agent.events import EventType  # noqa: E402
from agent.outbox import Outbox  # noqa: E402

PINS = (5, 6, 12, 13, 16, 17, 26, 27)
HEAVY = ("requests", "urllib3", "picamera2", "libcamera", "cv2", "numpy")


def _time_outbox_puts(path_ms: list[float], recorded: list[int]) -> None:
    """Wrap the outbox's put of one and of many events to time each panic from its edge to durable.

    The edge is the event's own ``mono_ms`` (the monotonic stamp taken on the
    pin callback, truncated to the millisecond, so a figure is at most 1 ms high).
    """

    seen: set[str] = set()  # put_many of one event goes through put: count each event once

    def note(events: list[Any]) -> None:
        now = time.monotonic()
        for ev in events:
            if ev.type is EventType.PANIC and ev.id not in seen:
                seen.add(ev.id)
                path_ms.append(now * 1000.0 - ev.mono_ms)
                recorded[0] += 1

    # the newest names first: put_row/put_rows return the committed rows, put/put_many call them
    single = "put_row" if hasattr(Outbox, "put_row") else "put"
    many = "put_rows" if hasattr(Outbox, "put_rows") else "put_many"
    put = getattr(Outbox, single)

    def timed_put(self: Outbox, event: Any) -> Any:
        out = put(self, event)
        note([event])
        return out

    setattr(Outbox, single, timed_put)
    put_many = getattr(Outbox, many, None)
    if put_many is not None:

        def timed_put_many(self: Outbox, events: Any) -> Any:
            events = list(events)
            out = put_many(self, events)
            note(events)
            return out

        setattr(Outbox, many, timed_put_many)


def _drive(
    agent: Agent,
    name: str,
    count: int,
    offset: float,
    spacing: float,
    start: float,
    held: list[float],
    edges: list[float],
) -> None:
    assert agent.inputs is not None
    for i in range(count):
        delay = start + offset + i * spacing - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.monotonic()
        agent.inputs.simulate(name, active=True)
        held.append((time.monotonic() - t) * 1000.0)
        edges.append(t)
        agent.inputs.simulate(name, active=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    inputs = [{"name": f"panic{i}", "kind": "panic_button", "pin": p, "debounce_ms": 0} for i, p in enumerate(PINS)]
    cfg_path = agent_config(
        args.workdir,
        args.port,
        args.device,
        inputs=inputs,
        outbox={"max_mb": 200},
        outputs={"ack_led": {"pin": 22}, "buzzer": {"pin": 23}},
    )
    logging.basicConfig(
        level=logging.INFO,
        filename=str(args.workdir / "agent.log"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    agent = Agent(load_config(cfg_path))
    path_ms: list[float] = []
    recorded = [0]
    _time_outbox_puts(path_ms, recorded)
    agent.start()
    try:
        deadline = time.monotonic() + 20
        while agent.uplink is not None and not agent.uplink.state().connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        per_input = args.presses // len(PINS)
        spacing = args.window_s / per_input
        held: list[float] = []
        edges: list[float] = []
        start = time.monotonic() + 0.1
        threads = [
            threading.Thread(
                target=_drive,
                args=(agent, f"panic{i}", per_input, i * spacing / len(PINS), spacing, start, held, edges),
            )
            for i in range(len(PINS))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.window_s + 30)
        deadline = time.monotonic() + 30
        while len(path_ms) < len(edges) and time.monotonic() < deadline:
            time.sleep(0.01)
        deadline = time.monotonic() + 60
        while agent.outbox is not None and agent.outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        pending = agent.outbox.pending() if agent.outbox is not None else -1
        heavy = sorted(m for m in HEAVY if m in sys.modules)
    finally:
        agent.stop()
        remove_socket_dirs()
    return {
        "presses": len(edges),
        "press_span_s": round(max(edges) - min(edges), 3) if edges else None,
        "recorded": recorded[0],
        "in_memory_only": agent.recorder.held_count() if agent.recorder else 0,
        "outbox_pending_after": pending,
        "edge_to_durable_ms": summary(path_ms, 2),
        "callback_held_ms": summary(held, 3),
        "heavy_modules_loaded": heavy,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--presses", type=int, default=1000)
    p.add_argument("--window-s", type=float, default=0.95)
    args = p.parse_args()
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
