"""Where a press's time goes, from the pin being driven to the PUBLISH on the wire and at the subscriber.

    .venv/bin/python bench/hotpath.py                 # 300 presses, table of median µs per stage
    CAMPUS_BENCH_AGENT_PATH=/x .venv/bin/python bench/hotpath.py   # the agent package under /x

The real agent runs in this process (as in ``bench/press_agent.py``) with
``time.monotonic_ns()`` marks wrapped around the functions on the button's
path; each mark keeps its first time after a press, so the stages of one
press are read in order.  The wrapped names are the current code's; a mark
whose function no longer exists is reported as missing, not guessed.  The
wrappers cost about a microsecond each, so the stages add up to slightly more
than an unmarked press.  A profiling aid, not a figure of ``make bench``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Procs, agent_config, remove_socket_dirs, start_broker, start_subscriber  # noqa: E402, I001
from bench.delivery import first_arrivals  # noqa: E402
from bench.presser import connected_agent, panic_pin, press_loop  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from agent import inputs, outbox, outbox_intake, recorder, uplink  # noqa: E402

# (mark, class, method, when): the button's path in the order a press walks it.  Where the code has
# changed a name, the first method of a "a|b" list that exists is marked.
MARKS: tuple[tuple[str, Any, str, str], ...] = (
    ("raw_edge", inputs.Inputs, "_raw_edge", "enter"),
    ("poll", inputs.Inputs, "_poll_once|poll", "enter"),
    ("record_many", recorder.Recorder, "record_deferring|record_many", "enter"),
    ("put", outbox.Outbox, "put_rows|put_many", "enter"),
    ("sql", outbox.Outbox, "_insert", "enter"),
    ("sql_done", outbox.Outbox, "_insert", "exit"),
    ("block", outbox_intake.Intake, "write", "enter"),
    ("block_synced", outbox_intake.Intake, "write", "exit"),
    ("committed", outbox.Outbox, "put_rows|put_many", "exit"),
    ("wake", uplink.Uplink, "offer|wake", "enter"),
    ("record_done", recorder.Recorder, "record_deferring|record_many", "exit"),
    ("send_round", uplink.Uplink, "_send_round", "enter"),
    ("next_batch", outbox.Outbox, "next_batch", "enter"),
    ("row_read", outbox.Outbox, "next_batch", "exit"),
    ("publish", mqtt.Client, "publish", "enter"),
    ("published", mqtt.Client, "publish", "exit"),
    ("on_wire", mqtt.Client, "_sock_send", "enter"),
)


class Marks:
    """One dict of first-mark times per press."""

    def __init__(self) -> None:
        self.presses: list[dict[str, int]] = []
        self.cur: dict[str, int] | None = None
        self.missing: list[str] = []

    def press(self) -> None:
        self.cur = {"press": time.monotonic_ns()}
        self.presses.append(self.cur)

    def mark(self, name: str) -> None:
        cur = self.cur
        if cur is not None and name not in cur:
            cur[name] = time.monotonic_ns()


def _is_event(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> bool:
    """Only the panic event's own publish and its bytes on the socket count (not a status or a reply)."""
    if name in ("publish", "published"):
        topic = args[1] if len(args) > 1 else kwargs.get("topic", "")
        return "/event/panic" in str(topic)
    if name == "on_wire":
        return b"/event/panic" in bytes(args[1][:200])
    return True


def install(marks: Marks) -> None:
    for name, owner, attrs, when in MARKS:
        attr = next((a for a in attrs.split("|") if hasattr(owner, a)), None)
        if attr is None:
            marks.missing.append(f"{name} ({owner.__name__}.{attrs})")
            continue
        fn = getattr(owner, attr)

        def wrap(fn: Callable[..., Any], name: str = name, when: str = when) -> Callable[..., Any]:
            @functools.wraps(fn)
            def marked(*args: Any, **kwargs: Any) -> Any:
                check = name in ("publish", "published", "on_wire")
                if when == "enter" and (not check or _is_event(args, kwargs, name)):
                    marks.mark(name)
                out = fn(*args, **kwargs)
                if when == "exit" and (not check or _is_event(args, kwargs, name)):
                    marks.mark(name)
                return out

            return marked

        setattr(owner, attr, wrap(fn))


# the critical path, and the marks beside it: (mark, measured from).  A mark a press does not pass
# (a changed path skips a step) is left out and the next stage is measured from the mark before it.
PATH = (
    "press",
    "raw_edge",
    "poll",
    "record_many",
    "put",
    "sql",
    "sql_done",
    "block",
    "block_synced",
    "committed",
    "wake",
    "send_round",
    "next_batch",
    "row_read",
    "publish",
    "on_wire",
    "arrived",
)
BESIDE = (("record_done", "wake"), ("published", "publish"))


def table(marks: Marks, arrivals: list[float]) -> list[tuple[str, float, float, int]]:
    """(stage, median µs, p90 µs, samples) between consecutive marks on the path, then the ones beside it."""
    for p, t in zip(marks.presses, arrivals, strict=False):
        p["arrived"] = int(t * 1e9)
    stages: dict[str, list[float]] = {}
    for p in marks.presses:
        # in the order the press passed them, up to the wire (a sender round after it is beside the path)
        passed = [m for _t, m in sorted((p[m], m) for m in PATH if m in p and m != "arrived" and p[m] >= p["press"])]
        if "on_wire" in passed:
            passed = passed[: passed.index("on_wire") + 1]
        sender = ("send_round", "next_batch", "row_read")  # a round that did not carry this press is beside it
        if "wake" in passed and "publish" in passed:
            w, pub = p["wake"], p["publish"]
            passed = [m for m in passed if m not in sender or w <= p[m] <= pub]
        if "arrived" in p:
            passed.append("arrived")
        for a, b in itertools.pairwise(passed):
            stages.setdefault(f"{a} → {b}", []).append((p[b] - p[a]) / 1e3)
        for b, a in BESIDE:
            if a in p and b in p:
                stages.setdefault(f"  (beside) {a} → {b}", []).append((p[b] - p[a]) / 1e3)
    rows = [(name, statistics.median(d), _p90(d), len(d)) for name, d in stages.items()]
    total = [(p["arrived"] - p["press"]) / 1e3 for p in marks.presses if "arrived" in p]
    if total:
        rows.append(("press → arrived (total)", statistics.median(total), _p90(total), len(total)))
    return rows


def _p90(d: list[float]) -> float:
    return sorted(d)[int(0.9 * (len(d) - 1))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presses", type=int, default=300)
    p.add_argument("--gap-ms", type=float, default=25.0)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    work = args.workdir / f"campus-hotpath-{time.monotonic_ns()}"
    marks = Marks()
    install(marks)
    work.mkdir(parents=True)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", filename=str(work / "agent.log")
    )
    with Procs() as procs:
        broker = start_broker(procs, work)
        cfg = agent_config(work / "dev", broker.port, "hotpath")
        sub = start_subscriber(
            procs,
            broker.port,
            ["campus/+/hotpath/event/#"],
            work / "sub.json",
            expect=args.presses,
            match="/event/panic",
            timeout=args.presses * args.gap_ms / 1e3 + 60,
        )
        try:
            with connected_agent(cfg) as agent:
                pin = panic_pin(agent)

                def press() -> None:
                    marks.press()
                    pin.drive_low()

                driver = threading.Thread(
                    target=press_loop,
                    args=(press, pin.drive_high),
                    kwargs={"count": args.presses, "gap_ms": args.gap_ms, "hold_ms": 5.0},
                )
                driver.start()
                driver.join()
                arrivals = [t for t, _m in first_arrivals(sub.result(timeout=30), "/event/panic").values()]
        finally:
            remove_socket_dirs()
            procs.later(lambda: shutil.rmtree(work, ignore_errors=True))
    rows = table(marks, arrivals)
    print(f"{'stage':36} {'median µs':>10} {'p90 µs':>10} {'n':>5}")
    for name, med, p90, n in rows:
        print(f"{name:36} {med:10.1f} {p90:10.1f} {n:5d}")
    if marks.missing:
        print("not marked (no such function in this code): " + ", ".join(marks.missing))
    if args.json:
        args.json.write_text(
            json.dumps(
                [{"stage": r[0], "median_us": round(r[1], 1), "p90_us": round(r[2], 1), "n": r[3]} for r in rows],
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
