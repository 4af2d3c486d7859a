"""A/B: press → delivery of several agent packages side by side, runs interleaved, on one broker.

    .venv/bin/python bench/ab.py --variant base=/tmp/base --variant new=/tmp/new --rounds 6

Each ``--variant NAME=DIR`` is a folder holding an ``agent`` package (for
example ``git archive <commit> agent | tar -x -C DIR``); ``--peer`` adds
mqtt-io and ``--raw`` raw paho + fsync to every round.  Each round runs every
contender once, the order rotating, so a loaded machine's changing weather
falls on all of them alike; the figure per contender is the median over
rounds of each run's p50 and p99, with every run's figures printed too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import delivery, peer  # noqa: E402
from bench.common import Procs, remove_socket_dirs, start_broker  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", default=[], help="NAME=DIR holding an agent package")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--presses", type=int, default=200)
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--peer", action="store_true", help="mqtt-io in every round too")
    p.add_argument("--raw", action="store_true", help="raw paho + fsync in every round too")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    variants = {name: Path(d) for name, d in (v.split("=", 1) for v in args.variant)}
    names = [*variants, *(["mqtt-io"] if args.peer else []), *(["raw"] if args.raw else [])]
    peer_py = peer.peer_python(args.workdir) if args.peer else None
    work = Path(tempfile.mkdtemp(prefix="campus-ab-", dir=args.workdir))
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    try:
        with Procs() as procs:
            broker = start_broker(procs, work)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    if name in variants:
                        res = delivery.agent_latency(procs, broker, work, args.presses, args.gap_ms, variants[name])
                    elif name == "mqtt-io":
                        assert peer_py is not None
                        res = delivery.peer_latency(procs, broker, work, args.presses, args.gap_ms, peer_py)
                    else:
                        res = delivery.baseline_latency(procs, broker, work, args.presses, args.gap_ms, work)
                    runs[name].append(res)
                    print(
                        f"round {r} {name:10} p50 {res['p50']:.3f} p99 {res['p99']:.3f} ms "
                        f"({res['delivered']}/{res['expected']})",
                        flush=True,
                    )
    finally:
        remove_socket_dirs()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'contender':12} {'p50 ms':>8} {'p99 ms':>8}  (median over {args.rounds} rounds)")
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "p50": round(statistics.median(x["p50"] for x in rs), 3),
            "p99": round(statistics.median(x["p99"] for x in rs), 3),
        }
        print(f"{name:12} {summary[name]['p50']:8.3f} {summary[name]['p99']:8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
