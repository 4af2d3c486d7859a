"""The agent for press → delivery: the real :class:`agent.daemon.Agent` in this process, its mock pin driven here.

Run by ``bench/delivery.py`` as its own process, exactly as the peer's wrapper
(``bench/press_mqttio.py``) runs mqtt-io: start the program in-process on
gpiozero's mock pins, wait until it is connected, then press the pin from a
thread of this process with a ``time.monotonic_ns()`` stamp taken just before
each press.  Writes the stamps (and the RSS at the end) to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402, F401 - first: it puts the agent under test on sys.path
from bench.presser import connected_agent, panic_pin, press_loop, rss_mb, write_result  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--hold-ms", type=float, default=5.0)
    args = p.parse_args()
    with connected_agent(args.config) as agent:
        pin = panic_pin(agent)
        stamps: list[int] = []
        driver = threading.Thread(
            target=lambda: stamps.extend(
                press_loop(pin.drive_low, pin.drive_high, count=args.count, gap_ms=args.gap_ms, hold_ms=args.hold_ms)
            ),
            name="bench-driver",
        )
        driver.start()
        driver.join()
        time.sleep(0.5)
        write_result(args.out, {"press_ns": stamps, "rss_mb": round(rss_mb(), 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
