"""Shared machinery of the fault-injection suite (issue 6).

Every scenario runs real processes (mosquitto, the agent as ``python -m agent
run``) and ends the same way: the set of event ids the agent reported as
recorded is compared with the set a central subscriber received.

* "Reported as recorded" is read from the agent's own log line
  ``recorded <type> from <source> as seq N (id X)``, which ``Agent.record``
  writes right after the durable put returned (or ``held <type> from <source>
  in memory, not yet on disk (id X)`` when the put failed; a later ``event X
  kept in memory is now recorded as seq N`` line completes it).  The log is complete even across
  SIGKILLs, unlike ``recent()`` (50 entries, gone with the process); tests
  cross-check ``recent()`` against it where the agent stays up.
* The central (:class:`EventSink`) subscribes before the agent publishes
  anything.  Where the broker itself restarts, it uses a persistent MQTT 3.1.1
  session on a broker with ``persistence true``, so messages published while it
  is reconnecting are queued for it, not lost: a non-persistent subscriber
  would report false losses there.

Counts: ``SOAK=1`` selects the full counts of the issue, otherwise the short
ones that keep ``make test`` within budget.  ``SEED`` makes the random moments
replayable (default 1).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.errors import ControlError
from tests.support.agentproc import ROOT, AgentProc
from tests.support.broker import Broker
from tests.support.waiting import eventually

SOAK = os.environ.get("SOAK") == "1"
SEED = int(os.environ.get("SEED", "1"))


class MakeBroker(Protocol):
    """The ``brokers`` fixture: a started mosquitto of this test only."""

    def __call__(self, *, persistence: bool = False) -> Broker: ...


class MakeAgent(Protocol):
    """The ``agents`` fixture: an agent process on ``port`` (started unless ``start=False``), killed after the test."""

    def __call__(
        self, port: int, device: str, *, env: dict[str, str] | None = None, start: bool = True, **extra: Any
    ) -> AgentProc: ...


def modes() -> list[object]:
    """Parametrize a scenario: a short case for ``make test``, a full one for ``make soak``."""
    return [
        pytest.param("short", id="short"),
        pytest.param(
            "full",
            id="full",
            marks=(pytest.mark.slow, pytest.mark.skipif(not SOAK, reason="full counts run under make soak (SOAK=1)")),
        ),
    ]


def count(mode: str, short: int, full: int) -> int:
    return full if mode == "full" else short


def rng_for(scenario: str, mode: str) -> random.Random:
    return random.Random(f"{SEED}-{scenario}-{mode}")


# ---- what the agent reported as recorded ------------------------------------------

RECORDED = re.compile(
    r"recorded (?P<type>[a-z_]+)(?: \(test\))? from (?P<source>\S+) as seq (?P<seq>\d+|None) "
    r"\(id (?P<id>[0-9a-f]{32})\)",
)
RESAVED = re.compile(r"event (?P<id>[0-9a-f]{32}) kept in memory is now recorded as seq (?P<seq>\d+)")
HELD = re.compile(
    r"held (?P<type>[a-z_]+)(?: \(test\))? from (?P<source>\S+) in memory, not yet on disk "
    r"\(id (?P<id>[0-9a-f]{32})\)",
)


@dataclass
class Rec:
    id: str
    type: str
    seq: int | None
    order: int  # position in the log
    run: int  # which agent process (index into the run offsets)


def read_recorded_settled(agent: AgentProc, timeout: float = 10.0) -> dict[str, Rec]:
    """The log's records once every event ``recent()`` lists has its log line.

    The log line is the last step of recording a press (after the recent list
    and the hand-off to the sender), so a press made just before the test stops
    pressing can be in ``recent()`` a moment before it is in the log.
    """

    def settled() -> dict[str, Rec] | None:
        recorded = read_recorded(agent.log)
        return recorded if {e["id"] for e in agent.recent()} <= set(recorded) else None

    return eventually(settled, timeout, "recent() to show only events the log has", retry_on=(ControlError,))


def read_recorded(log: Path, run_offsets: list[int] | None = None) -> dict[str, Rec]:
    """Every event the agent's log says it recorded, by id.

    ``run_offsets`` are the log sizes at each process start, so each record can
    be attributed to its process (seq must grow across them).  The regex runs
    over the whole text, not line by line: a line cut by SIGKILL is glued to the
    next process's first line, and the record inside must still be found.
    """
    text = log.read_bytes().decode("utf-8", "replace")
    offsets = run_offsets or [0]
    out: dict[str, Rec] = {}
    found = sorted([*RECORDED.finditer(text), *HELD.finditer(text)], key=lambda m: m.start())
    for n, m in enumerate(found):
        seq = None if "seq" not in m.groupdict() or m["seq"] == "None" else int(m["seq"])
        run = max(0, bisect.bisect_right(offsets, m.start()) - 1)
        out[m["id"]] = Rec(m["id"], m["type"], seq, n, run)
    for m in RESAVED.finditer(text):
        if m["id"] in out:
            out[m["id"]].seq = int(m["seq"])
    return out


def wait_logged(agent: AgentProc, n: int, type_: str = "panic", timeout: float = 10.0) -> dict[str, Rec]:
    """Everything the log says was recorded, once it holds at least ``n`` events of ``type_``.

    A click returns when the pin has changed; the event is recorded a moment
    later on the agent's inputs thread.
    """

    def enough() -> dict[str, Rec] | None:
        rec = read_recorded(agent.log)
        return rec if sum(r.type == type_ for r in rec.values()) >= n else None

    return eventually(enough, timeout, f"{n} {type_} events in the agent's log")


def seq_problems(recorded: dict[str, Rec], sink: EventSink) -> list[str]:
    """``seq`` unique, identical on every copy, and growing from one process to the next."""
    problems = []
    seqs = Counter(r.seq for r in recorded.values() if r.seq is not None)
    problems += [f"seq {s} given to {n} events" for s, n in seqs.items() if n > 1]
    for r in recorded.values():
        got = sink.seqs.get(r.id)
        if got and r.seq is not None and got != {r.seq}:
            problems.append(f"event {r.id} recorded as seq {r.seq} but arrived as seq {sorted(got)}")
    by_run: dict[int, list[int]] = {}
    for r in recorded.values():
        if r.seq is not None:
            by_run.setdefault(r.run, []).append(r.seq)
    runs = sorted(by_run)
    problems += [
        f"process {b} reused seq {min(by_run[b])} at or below {max(by_run[a])} of process {a}"
        for a, b in itertools.pairwise(runs)
        if min(by_run[b]) <= max(by_run[a])
    ]
    return problems[:20]


# ---- the central side ---------------------------------------------------------------


class EventSink:
    """A central subscriber that counts every copy of every event of one device.

    ``persistent=True``: MQTT 3.1.1 with ``clean_session=False``, for brokers
    that restart (needs ``persistence true`` on the broker), so nothing
    published while this client reconnects is lost to it.
    """

    def __init__(self, port: int, device: str, *, persistent: bool = False) -> None:
        self.device = device
        self.copies: Counter[str] = Counter()
        self.seqs: dict[str, set[int]] = {}
        self.docs: dict[str, dict[str, Any]] = {}
        self.first_order: list[str] = []
        self.status: list[tuple[float, dict[str, Any]]] = []
        self.bad_payloads = 0
        self.connects = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.connected = threading.Event()
        cid = f"faults-central-{uuid.uuid4().hex[:8]}"
        if persistent:
            self.c = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv311, clean_session=False
            )
        else:
            self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv5)
        # paho annotates the delays as int, but they are seconds and fractions work
        self.c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_a: self.connected.clear()
        self.c.on_subscribe = lambda *_a: self._subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError("central subscriber got no SUBACK")

    def _on_connect(self, cl: Any, _ud: Any, _fl: Any, rc: Any, _pr: Any) -> None:
        if rc.is_failure:
            return
        self.connects += 1
        self.connected.set()
        cl.subscribe([(f"campus/+/{self.device}/event/#", 1), (f"campus/+/{self.device}/status", 1)])

    def _on_message(self, _cl: Any, _ud: Any, m: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(m.payload)
        except ValueError:
            with self._lock:
                self.bad_payloads += 1
            return
        with self._lock:
            if m.topic.endswith("/status"):
                self.status.append((time.monotonic(), doc))
                return
            eid = str(doc.get("id"))
            if eid not in self.copies:
                self.first_order.append(eid)
                self.docs[eid] = doc
            self.copies[eid] += 1
            self.seqs.setdefault(eid, set()).add(int(doc.get("seq", -1)))

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.copies)

    def missing(self, ids: set[str]) -> set[str]:
        return ids - self.ids()

    def wait_for_ids(self, ids: set[str], timeout: float) -> set[str]:
        """Wait until every id arrived; return what is still missing at the deadline.

        Missing ids are returned, not raised: ``settle`` puts them in the table
        row and the scenario's assert names them.
        """
        with contextlib.suppress(AssertionError):
            eventually(lambda: not self.missing(ids), timeout, "every recorded event at the central", interval=0.1)
        return self.missing(ids)

    def duplicates(self, ids: set[str] | None = None) -> int:
        """Extra copies received (at-least-once: allowed, counted)."""
        with self._lock:
            return sum(n - 1 for i, n in self.copies.items() if ids is None or i in ids)

    def out_of_order(self) -> int:
        """First arrivals whose seq is below an earlier first arrival (reported, not asserted)."""
        with self._lock:
            seqs = [self.docs[i].get("seq", 0) for i in self.first_order]
        top, n = -1, 0
        for s in seqs:
            if s < top:
                n += 1
            top = max(top, s)
        return n

    def wait_status(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, since: float = 0.0, what: str = "status"
    ) -> tuple[float, dict[str, Any]]:
        """The first status document received after ``since`` (monotonic) for which ``pred`` holds."""

        def find() -> tuple[float, dict[str, Any]] | None:
            with self._lock:
                return next(((t, d) for t, d in self.status if t >= since and pred(d)), None)

        return eventually(find, timeout, what)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# ---- pressing the button -----------------------------------------------------------------


class Presser:
    """Clicks the simulated panic button from a thread until stopped (bounded in count and time).

    Failures (agent killed or restarting) are counted, not raised: only what
    the agent logged as recorded counts, whatever this thread believed.
    """

    def __init__(
        self,
        agent: AgentProc,
        rng: random.Random,
        *,
        gap: tuple[float, float] = (0.01, 0.04),
        max_presses: int = 100_000,
        max_s: float = 600.0,
        name: str = "panic",
    ) -> None:
        self.agent = agent
        self.rng = rng
        self.gap = gap
        self.max_presses = max_presses
        self.max_s = max_s
        self.name = name
        self.ok = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presser", daemon=True)

    def start(self) -> Presser:
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and self.ok + self.errors < self.max_presses and time.monotonic() < deadline:
            try:
                self.agent.click(self.name)
                self.ok += 1
            except (ControlError, OSError):
                self.errors += 1
            self._stop.wait(self.rng.uniform(*self.gap))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "presser thread did not stop"


# ---- the agent process ---------------------------------------------------------------------


def spawn(agent: AgentProc) -> None:
    """Start the agent process without waiting for it (so it can be killed while starting)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(agent.env or {}))
    with open(agent.log, "ab") as logf:
        agent.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(agent.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


def connected(agent: AgentProc) -> bool:
    return bool(agent.status()["link"]["connected"])


def wait_connected(agent: AgentProc, timeout: float = 20.0, up: bool = True) -> None:
    """Until the agent's link is up (or down); an agent still starting counts as "not yet"."""
    eventually(
        lambda: connected(agent) is up,
        timeout,
        f"agent link {'up' if up else 'down'}",
        interval=0.05,
        retry_on=(ControlError,),
    )


def log_size(agent: AgentProc) -> int:
    return agent.log.stat().st_size if agent.log.exists() else 0


def log_text(agent: AgentProc, since: int = 0) -> str:
    with open(agent.log, "rb") as f:
        f.seek(since)
        return f.read().decode("utf-8", "replace")


# ---- the result of a scenario --------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    events: int
    lost: int
    duplicated: int
    seconds: float
    note: str = ""
    outcome: str = "?"
    missing: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Rows for the table printed at the end of the session (see conftest.py)."""

    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def table(self) -> str:
        head = ("scenario", "events", "lost", "duplicated", "time", "result", "notes")
        body = [
            (r.scenario, str(r.events), str(r.lost), str(r.duplicated), f"{r.seconds:.1f} s", r.outcome, r.note)
            for r in self.rows
        ]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
        lines = []
        for cols in [head, (*("-" * w for w in widths), "-----"), *body]:
            lines.append(
                "  ".join(
                    c.ljust(w) if i < len(widths) else c
                    for i, (c, w) in enumerate(zip(cols, [*widths, 0], strict=True))
                ).rstrip()
            )
        return "\n".join(lines)


REPORT = Report()


def settle(
    scenario: str,
    t0: float,
    recorded: dict[str, Rec],
    sink: EventSink,
    *,
    timeout: float,
    note: str = "",
    only: Callable[[Rec], bool] | None = None,
) -> Row:
    """Wait for delivery, add the table row, and return it; the caller asserts on it.

    ``only`` narrows the comparison (e.g. to alarms when the documented eviction
    may drop other events).
    """
    want = {i for i, r in recorded.items() if only is None or only(r)}
    missing = sink.wait_for_ids(want, timeout)
    row = Row(
        scenario,
        len(want),
        len(missing),
        sink.duplicates(want),
        time.monotonic() - t0,
        note,
        missing=sorted(missing, key=lambda i: recorded[i].order),
    )
    return REPORT.add(row)


def describe_missing(row: Row, recorded: dict[str, Rec]) -> str:
    sample = ", ".join(f"{recorded[i].type} seq {recorded[i].seq} ({i[:8]})" for i in row.missing[:10])
    return f"{row.lost} of {row.events} recorded events never reached the central (seed {SEED}): {sample}"
