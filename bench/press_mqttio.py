"""The peer for press → delivery: mqtt-io in this process, its gpiozero mock pin driven here.

Runs under the peer's own virtual environment (``bench/peer.py`` makes it),
so it imports nothing from the agent: only ``mqtt_io`` and gpiozero, started
with ``GPIOZERO_PIN_FACTORY=mock``.  mqtt-io's own entry point does the same
three steps (load, validate, ``MqttIo(config).run()``); ``run`` keeps the main
thread (it installs the signal handlers), so the press loop runs in a thread
that waits for mqtt-io's ``running`` flag (connected, interrupt handlers armed).
Writes the press stamps and the RSS at the end to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")

from presser import press_loop, rss_mb, write_result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--pin", type=int, default=17)
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--hold-ms", type=float, default=5.0)
    args = p.parse_args()

    import logging.config  # noqa: PLC0415

    from gpiozero import Device  # noqa: PLC0415
    from mqtt_io.__main__ import load_config  # noqa: PLC0415
    from mqtt_io.config import validate_and_normalise_main_config  # noqa: PLC0415
    from mqtt_io.server import MqttIo  # noqa: PLC0415

    config = validate_and_normalise_main_config(load_config(str(args.config), None))
    if config["logging"]:
        logging.config.dictConfig(config["logging"])
    server: Any = MqttIo(config)
    failed: list[str] = []

    def drive() -> None:
        try:
            if not server.running.wait(20):
                failed.append("mqtt-io did not connect within 20 s")
                return
            time.sleep(0.5)  # its birth status is out of the way
            pin = Device.pin_factory.pin(args.pin)  # mqtt-io's Button on this pin (pull-up: pressed = low)
            stamps = press_loop(
                pin.drive_low, pin.drive_high, count=args.count, gap_ms=args.gap_ms, hold_ms=args.hold_ms
            )
            time.sleep(0.5)
            write_result(args.out, {"press_ns": stamps, "rss_mb": round(rss_mb(), 2)})
        except Exception as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
        finally:
            task = server._main_task  # as its SIGTERM handler does
            if task is not None:
                server.loop.call_soon_threadsafe(task.cancel)

    driver = threading.Thread(target=drive, name="bench-driver", daemon=True)
    driver.start()
    server.run()
    driver.join(5)
    if failed:
        print("; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
