"""Shared pieces of the benchmarks: statistics, child processes, the broker, agents, outbox set-up.

Everything the bench starts binds 127.0.0.1 and is registered with a
:class:`Procs`, which stops it again in ``finally`` (also on Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# A/B runs: CAMPUS_BENCH_AGENT_PATH=/some/dir (holding an ``agent`` package) measures that
# agent instead of this tree's, in this process and in every child.
AGENT_PATH = os.environ.get("CAMPUS_BENCH_AGENT_PATH") or None
if AGENT_PATH and sys.path[0] != AGENT_PATH:
    sys.path.insert(0, AGENT_PATH)

from agent.events import Clock, Event, EventType  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from tests.support import agentproc  # noqa: E402
from tests.support.agentproc import AgentProc, write_config  # noqa: E402
from tests.support.broker import Broker  # noqa: E402

BENCH = ROOT / "bench"
PY = sys.executable
SITE = "main"
# One panic event's data as the inputs module writes it.
PANIC_DATA = {"pin": 17, "contact": "normally_open"}


# ---- statistics ------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: Sequence[float], nd: int = 3) -> dict[str, float]:
    """p50, p99, max and count of one run's samples."""
    return {
        "p50": round(pct(values, 50), nd),
        "p99": round(pct(values, 99), nd),
        "max": round(max(values), nd) if values else math.nan,
        "n": len(values),
    }


def median_of(runs: Iterable[dict[str, Any]], key: str, nd: int = 3) -> float:
    vals = [float(r[key]) for r in runs if r.get(key) is not None and not math.isnan(float(r[key]))]
    return round(statistics.median(vals), nd) if vals else math.nan


def median_summary(runs: Sequence[dict[str, float]], nd: int = 3) -> dict[str, float]:
    """The median over repeated runs of each run's p50 and p99 (and the worst max)."""
    return {
        "p50": median_of(runs, "p50", nd),
        "p99": median_of(runs, "p99", nd),
        "max": round(max(float(r["max"]) for r in runs), nd),
    }


# ---- child processes ---------------------------------------------------------------------


class Procs:
    """Every child and clean-up step of a bench run; :meth:`close` undoes them newest first."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], object]] = []

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (AGENT_PATH, str(ROOT)) if p))
        env.update(kw.pop("env", {}) or {})
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, **kw)
        self._undo.append(lambda: stop_process(proc))
        return proc

    def later(self, fn: Callable[[], object]) -> None:
        self._undo.append(fn)

    def close(self) -> None:
        while self._undo:
            fn = self._undo.pop()
            with contextlib.suppress(Exception):
                fn()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: one process, by its own handle."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return proc.returncode


def wait_line(proc: subprocess.Popen[bytes], want: str, timeout: float) -> str:
    """Read the child's stdout until a line starting with ``want``; bounded by ``timeout``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        for line in buf.decode(errors="replace").splitlines():
            if line.startswith(want):
                return line
    raise TimeoutError(f"{proc.args!r} did not print {want!r} within {timeout:g} s; got {buf[-500:]!r}")


def cpu_ticks_s(pid: int) -> float:
    """Utime + stime of the whole process (every thread, live or ended), in seconds; 10 ms resolution."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- broker -------------------------------------------------------------------------------------


class BenchBroker(Broker):
    """The test suite's mosquitto helper, configured for measuring rather than debugging.

    No per-message debug log (``log_type all`` would write two lines per
    PUBLISH); ``max_queued_messages`` raised so a subscriber that falls behind
    is never silently dropped (mosquitto's default of 1000 would).
    """

    SETTINGS = ("max_queued_messages 1000000", "max_inflight_messages 100", "persistence false")

    def write_conf(self) -> None:
        lines = [
            "per_listener_settings true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            *self.SETTINGS,
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        lines.append(f"listener {self.port} 127.0.0.1")
        self.conf.write_text("\n".join(lines) + "\n" + self.listener_extra)

    def dropped_warnings(self) -> int:
        """Mosquitto's own log lines about dropping messages for a slow client."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if "dropped" in line.lower() or "dropping" in line.lower())


def start_broker(procs: Procs, workdir: Path) -> BenchBroker:
    for attempt in range(3):  # free_port() can race another process; a new port fixes it
        broker = BenchBroker(workdir / f"broker{attempt}")
        try:
            broker.start()
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        procs.later(broker.stop)
        return broker
    raise AssertionError("unreachable")


# ---- agents --------------------------------------------------------------------------------------


def agent_config(workdir: Path, port: int, device: str, **extra: Any) -> Path:
    """The test suite's agent config (mock pins, loopback broker), with bench overrides."""
    return write_config(workdir, port, device=device, **extra)


def remove_socket_dirs() -> None:
    """The control-socket folders ``write_config`` made under /tmp for this process."""
    remove = getattr(agentproc, "remove_socket_dirs", None)
    if remove is not None:
        remove()


class EntryAgentProc(AgentProc):
    """The agent started exactly as systemd starts it: the ``campus-agent`` entry point."""

    def __init__(self, config: Path, procs: Procs) -> None:
        super().__init__(config)
        self._procs = procs
        procs.later(self.cleanup)

    def start(self, timeout: float = 20.0) -> EntryAgentProc:
        entry = Path(PY).parent / "campus-agent"
        cmd = (
            [str(entry), "run", "-c", str(self.config)]
            if entry.exists()
            else [PY, "-m", "agent", "run", "-c", str(self.config)]
        )
        if os.geteuid() == 0:
            cmd.append("--allow-root")  # the bench box runs as root; a Pi runs the unit's own user
        with self.log.open("ab") as logf:
            self.proc = self._procs.popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(Exception):
                self.ask("status", timeout=1.0)
                return self
            time.sleep(0.05)
        raise TimeoutError(f"agent did not answer on {self.socket}:\n{self.log.read_text()[-3000:]}")

    def wait_connected(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status()["link"]["connected"]:
                return
            time.sleep(0.05)
        raise TimeoutError(f"agent did not connect within {timeout:g} s:\n{self.log.read_text()[-3000:]}")


# ---- a separate subscriber process ---------------------------------------------------------------


@dataclass
class SubscriberRun:
    """A running ``bench/subscriber.py``; :meth:`result` waits for it and reads what it recorded."""

    proc: subprocess.Popen[bytes]
    out: Path

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)  # SIGTERM: it writes what it has
        stop_process(self.proc)
        return json.loads(self.out.read_text()) if self.out.exists() else {"arrivals": [], "timed_out": True}


def start_subscriber(
    procs: Procs,
    port: int,
    topics: Sequence[str],
    out: Path,
    *,
    expect: int,
    match: str,
    timeout: float,
    count_messages: bool = False,
) -> SubscriberRun:
    """Start the subscriber and wait for its SUBACK; it exits once ``expect`` distinct ids matched."""
    cmd = [
        PY,
        str(BENCH / "subscriber.py"),
        "--port",
        str(port),
        "--out",
        str(out),
        "--expect",
        str(expect),
        "--match",
        match,
        "--timeout",
        str(timeout),
    ]
    for t in topics:
        cmd += ["--topic", t]
    if count_messages:
        cmd.append("--count-messages")
    proc = procs.popen(cmd, stdout=subprocess.PIPE)
    wait_line(proc, "READY", 15.0)
    return SubscriberRun(proc, out)


# ---- outbox helpers ------------------------------------------------------------------------------


def sample_event(kind: EventType = EventType.PANIC) -> Event:
    return Event.create(Clock(), kind, "panic", data=PANIC_DATA)


def run_standalone(
    argv: list[str] | None,
    *,
    doc: str,
    name: str,
    quick_help: str,
    figure: Callable[[str, Path], dict[str, Any]],
    line: Callable[[dict[str, Any]], str],
) -> int:
    """A figure run on its own (not from run.py): options, a work folder, the result file with the machine.

    ``--quick``, ``--workdir`` (on the outbox's real filesystem) and ``--out``
    (default ``bench/results/{name}.json``); ``figure(mode, work)`` measures,
    the machine and the load average at start and end are added, ``line(res)``
    is printed.  Exit 0 when the result says it is valid.
    """
    import argparse  # noqa: PLC0415 - only the standalone entry points parse options

    from bench.machine import machine_info  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="on the outbox's real filesystem")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / f"{name}.json")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix=f"campus-{name}-", dir=args.workdir) as tmp:
        try:
            res = figure(mode, Path(tmp))
        finally:
            remove_socket_dirs()
    res["mode"] = mode
    res["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["machine"] = machine_info(args.workdir)
    res["machine"]["loadavg_start"] = load_start
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(line(res))
    print(f"wrote {args.out}")
    return 0 if res["valid"] else 1


def bulk_fill(ob: Outbox, count: int, kind: EventType = EventType.PANIC, chunk: int = 50_000) -> None:
    """Add ``count`` realistic rows in large transactions: set-up, not the thing measured.

    Each row is a real event body with its own id; one commit per ``chunk``
    rows instead of one fsync per event.
    """
    template = sample_event(kind)
    body = template.body(ob._site, ob._device)
    head, tail = body.split(template.id, 1)
    created = int(time.time() * 1000)
    alarm = int(kind.is_alarm)
    left = count
    with ob._lock:
        while left > 0:
            n = min(chunk, left)
            rows = []
            for _ in range(n):
                eid = uuid.uuid4().hex
                rows.append((eid, kind.value, alarm, created, f"{head}{eid}{tail}"))
            with ob._txn():
                ob._conn.executemany(
                    "INSERT INTO outbox (id, type, alarm, created_ms, body) VALUES (?, ?, ?, ?, ?)", rows
                )
            ob._pending += n
            left -= n
        last = ob._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        if hasattr(ob, "_last_seq"):  # what the outbox has committed: the sender reads no further
            ob._last_seq = int(last[0])
        if hasattr(ob, "_top"):  # the outbox's own counter gives the next seq: it must know these
            with ob._seq_lock:
                ob._top = max(ob._top, int(last[0]))
