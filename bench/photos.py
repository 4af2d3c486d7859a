"""Photo figures (issue 13): press → alarm with photos on and off, and press → photo, on a loopback HTTP camera.

    .venv/bin/python bench/photos.py            # 40 presses per run; writes bench/results/photos.json
    .venv/bin/python bench/photos.py --quick    # 12 presses per run
    .venv/bin/python bench/run.py --only photos --quick --out-dir /tmp/x   # as part of the bench

Every run starts one agent as its own process on gpiozero's mock pins and
presses its panic input from a thread of that process, a
``time.monotonic_ns()`` stamp taken just before each press (exactly as
``bench/press_agent.py`` does for the latency figure).  Both kinds of run
configure the same camera, a loopback HTTP camera serving a 200 kB JPEG
(``tests/support/snapcam.py``, bound to 127.0.0.1 and stopped after); only in a
photos-ON run does the input name it (``inputs[].snapshot: [gate-cam]``), so a
photos-OFF agent never builds its photo store or workers.  ON and OFF runs
take turns going first on the same broker, measured by the same subscriber
program (``bench/subscriber.py``), which stamps every arrival on the same
clock: press → alarm is the arrival of ``.../event/panic`` (arrival i is press
i), press → photo the arrival of ``.../snapshot/{event_id}`` minus the stamp of
the press that raised that alarm.  Presses are ``gap_s`` apart so photos do not
pile up; the agent stays up until the subscriber has everything (or times out).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: F401 - first: it puts the agent under test on sys.path
from bench.common import (
    BENCH,
    PY,
    BenchBroker,
    Procs,
    agent_config,
    median_summary,
    run_standalone,
    start_broker,
    start_subscriber,
    summary,
)
from bench.delivery import first_arrivals
from tests.support.agentproc import unique_id
from tests.support.snapcam import SnapCamera

FULL = {"presses": 40, "gap_s": 0.5, "reps": 2, "jpeg_bytes": 200_000}
QUICK = {"presses": 12, "gap_s": 0.5, "reps": 1, "jpeg_bytes": 200_000}
TARGET_RATIO = 1.1  # press → alarm with photos on, at most this times photos off (p50 and p99)
CAMERA = "gate-cam"


def _config(work: Path, port: int, dev: str, cam: SnapCamera, *, photos: bool) -> Path:
    """The test suite's agent config plus one HTTP camera; the panic input names it only when ``photos``."""
    panic: dict[str, Any] = {"name": "panic", "kind": "panic_button", "pin": 17, "debounce_ms": 0}
    if photos:
        panic["snapshot"] = [CAMERA]
    return agent_config(
        work / dev,
        port,
        dev,
        inputs=[panic],
        cameras=[{"name": CAMERA, "kind": "http_snapshot", "url": cam.url, "probe_interval_s": 3600, "timeout_s": 5}],
    )


def one_run(
    procs: Procs, broker: BenchBroker, work: Path, cam: SnapCamera, *, photos: bool, presses: int, gap_s: float
) -> dict[str, Any]:
    """One agent, ``presses`` presses; press → alarm (and, with ``photos``, press → photo) in ms."""
    dev = unique_id("photo-on" if photos else "photo-off")
    cfg = _config(work, broker.port, dev, cam, photos=photos)
    timeout = presses * gap_s + 60
    sub_out = work / dev / "sub.json"
    # ON: done when every photo is in (each follows its alarm); OFF: when every alarm is in
    sub = start_subscriber(
        procs,
        broker.port,
        [f"campus/+/{dev}/event/#", f"campus/+/{dev}/snapshot/#"],
        sub_out,
        expect=presses,
        match="/snapshot/" if photos else "/event/panic",
        timeout=timeout,
        count_messages=photos,
    )
    out = work / dev / "presses.json"
    with (work / dev / "agent.log").open("ab") as log:
        proc = procs.popen(
            [
                PY,
                str(BENCH / "photos.py"),
                "press",
                "--config",
                str(cfg),
                "--out",
                str(out),
                "--count",
                str(presses),
                "--gap-ms",
                str(gap_s * 1000),
                "--until",
                str(sub_out),
                "--timeout",
                str(timeout + 10),
            ],
            stdout=log,
            stderr=log,
        )
    rc = proc.wait(timeout + 40)
    got = sub.result(timeout=30)
    if rc != 0 or not out.exists():
        text = (work / dev / "agent.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"photo press run exited with {rc}; see {work / dev / 'agent.log'}:\n{text}")
    pressed = json.loads(out.read_text())
    return _evaluate(got, pressed["press_ns"], photos=photos, photos_status=pressed.get("photos"))


def _evaluate(
    sub: dict[str, Any], press_ns: list[int], *, photos: bool, photos_status: dict[str, Any] | None
) -> dict[str, Any]:
    """Arrival i of ``/event/panic`` is press i; a photo belongs to the press of the alarm its topic names."""
    alarms = sorted(first_arrivals(sub, "/event/panic").items(), key=lambda kv: kv[1][0])
    press_of = {eid: press_ns[i] for i, (eid, _v) in enumerate(alarms[: len(press_ns)])}
    alarm_ms = [(t * 1e9 - press_of[eid]) / 1e6 for eid, (t, _m) in alarms if eid in press_of]
    photo_ms: dict[str, float] = {}
    for t, topic, *_rest in sub["arrivals"]:
        eid = topic.rsplit("/", 1)[-1]
        if "/snapshot/" in topic and eid in press_of and eid not in photo_ms:
            photo_ms[eid] = (t * 1e9 - press_of[eid]) / 1e6
    failed = sum(1 for _t, topic, *_r in sub["arrivals"] if topic.endswith("/event/snapshot_failed"))
    n = len(press_ns)
    out: dict[str, Any] = {"photos": photos, "expected": n, "delivered": len(alarm_ms), "alarm_ms": summary(alarm_ms)}
    if photos:
        out |= {
            "photos_delivered": len(photo_ms),
            "snapshot_failed": failed,
            "photo_ms": summary(list(photo_ms.values())),
            "photos_status_at_end": photos_status,
        }
    out["valid"] = len(alarm_ms) == n and (not photos or len(photo_ms) == n)
    return out


def figure(mode: str, work: Path) -> dict[str, Any]:
    """ON and OFF runs taking turns on one broker; medians of each run's p50 and p99."""
    p = QUICK if mode == "quick" else FULL
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    cam = SnapCamera(size=p["jpeg_bytes"]).start()
    try:
        with Procs() as procs:
            broker = start_broker(procs, work)
            for rep in range(p["reps"]):
                for photos in (True, False) if rep % 2 == 0 else (False, True):
                    runs["on" if photos else "off"].append(
                        one_run(procs, broker, work, cam, photos=photos, presses=p["presses"], gap_s=p["gap_s"])
                    )
            drops = broker.dropped_warnings()
    finally:
        cam.stop()
    on = median_summary([r["alarm_ms"] for r in runs["on"]])
    off = median_summary([r["alarm_ms"] for r in runs["off"]])
    ratio = {q: round(on[q] / off[q], 2) if off[q] else None for q in ("p50", "p99")}
    passed = all(r is not None and r <= TARGET_RATIO for r in ratio.values())
    valid = all(r["valid"] for rs in runs.values() for r in rs) and drops == 0
    return {
        "presses": p["presses"],
        "press_gap_s": p["gap_s"],
        "reps": p["reps"],
        "jpeg_bytes": p["jpeg_bytes"],
        "camera": "http_snapshot on 127.0.0.1 (tests/support/snapcam.py)",
        "alarm_photos_on_ms": on,
        "alarm_photos_off_ms": off,
        "press_to_photo_ms": median_summary([r["photo_ms"] for r in runs["on"]]),
        "photos_delivered": sum(r["photos_delivered"] for r in runs["on"]),
        "photos_expected": p["presses"] * len(runs["on"]),
        "target": {
            "alarm_on_vs_off": f"p50 and p99 <= {TARGET_RATIO}x photos off",
            "ratio_p50": ratio["p50"],
            "ratio_p99": ratio["p99"],
            "ratio": max((r for r in ratio.values() if r is not None), default=None),
            "result": ("PASS" if passed else "MISS") if valid else "INVALID",
        },
        "broker_drop_warnings": drops,
        "runs": runs,
        "valid": valid,
    }


# ---- the press process: the agent in-process, its mock pin driven here ----------------------------------


def press_main(argv: list[str]) -> int:
    """Run the agent, press ``--count`` times, then stay up until ``--until`` exists (the subscriber is done)."""
    ap = argparse.ArgumentParser(prog="photos.py press")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--gap-ms", type=float, required=True)
    ap.add_argument("--until", type=Path, required=True)
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args(argv)
    from bench.presser import connected_agent, panic_pin, press_loop, write_result  # noqa: PLC0415

    with connected_agent(args.config) as agent:
        pin = panic_pin(agent)
        stamps: list[int] = []
        driver = threading.Thread(
            target=lambda: stamps.extend(
                press_loop(pin.drive_low, pin.drive_high, count=args.count, gap_ms=args.gap_ms, hold_ms=5.0)
            ),
            name="bench-driver",
        )
        driver.start()
        driver.join()
        deadline = time.monotonic() + args.timeout
        while not args.until.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        photos = agent.photos.status() if agent.photos is not None else None
        write_result(args.out, {"press_ns": stamps, "photos": photos})
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["press"]:
        return press_main(argv[1:])
    return run_standalone(
        argv, doc=__doc__ or "", name="photos", quick_help="12 presses per run instead of 40", figure=figure, line=line
    )


def line(res: dict[str, Any]) -> str:
    """The figure in one sentence."""
    on, off, ph, t = res["alarm_photos_on_ms"], res["alarm_photos_off_ms"], res["press_to_photo_ms"], res["target"]
    return (
        f"photos: {res['presses']} presses x {res['reps']} runs each way, {res['jpeg_bytes'] // 1000} kB JPEG: "
        f"press → alarm p50/p99 {on['p50']:.2f}/{on['p99']:.2f} ms with photos, {off['p50']:.2f}/{off['p99']:.2f} "
        f"ms without (ratio {t['ratio_p50']}/{t['ratio_p99']}: {t['result']}); press → photo p50/p99 "
        f"{ph['p50']:.1f}/{ph['p99']:.1f} ms; {res['photos_delivered']}/{res['photos_expected']} photos; "
        f"valid: {res['valid']}"
    )


if __name__ == "__main__":
    sys.exit(main())
