"""The uplink and the outbox as a pair, driven by hypothesis in any order (issue 9; STYLE habit 13).

Real parts: the SQLite outbox in tmp_path, the uplink's own send round
(``_send_round``: process PUBACKs, fill the window, in the order the sender
thread runs them) and the send window.  Fake: only the network, at the seam
the uplink uses, a client whose ``publish`` returns a message id and whose
PUBACKs (success or an MQTT 5 refusal) arrive as the uplink's paho callback
queues them.  A disconnect ends the session as the sender's teardown does (the
window is reset, late PUBACKs are dropped); a restart also closes and reopens
the outbox file and builds a fresh uplink.

The committing thread's hand-off (``Uplink.offer`` right after the commit,
agent/eventsend.py) is driven too: it may publish the rows at once, arrive
after the sender's round already read them, or find the sender's lock taken
(a round running), and whatever it publishes is checked by the same rules.

Invariants: no alarm is lost (every real alarm is in the outbox or was taken by
the broker, and all are acknowledged after enough good rounds), no row is
published twice within one session except after a refusal, real alarms are
always chosen before routine rows (which leave one slot of the window free
for them), and ``seq`` never goes back.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import load_config
from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.sendwindow import (
    REFUSED_ALARM_RETRY_MAX_S,
    REFUSED_ALARM_RETRY_MIN_S,
    REFUSED_RETRY_MAX_S,
    REFUSED_RETRY_MIN_S,
)
from agent.uplink import Uplink
from tests.support.agentproc import write_config
from tests.support.clocks import synced_clock

if TYPE_CHECKING:
    from agent.session import Session as RealSession

CLOCK = synced_clock()
WINDOW = 3
_SUCCESS = 0x00
_NOT_AUTHORIZED = 0x87
HANDED = ("at_once", "late", "busy")  # when the committing thread's hand-off reaches the uplink
_ROUND_S = 0.01  # each send round is a little later: the window's pacing needs time to pass


class FakeClient:
    """The network side: remembers what was published and which message ids wait for a PUBACK."""

    def __init__(self) -> None:
        self.mid = 0
        self.waiting: dict[int, dict[str, Any]] = {}  # mid → event document, until its PUBACK
        self.log: list[tuple[int, str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> SimpleNamespace:
        self.mid += 1
        self.log.append((self.mid, topic, payload))
        if "/event/" in topic:
            self.waiting[self.mid] = json.loads(payload)
        return SimpleNamespace(rc=MQTTErrorCode.MQTT_ERR_SUCCESS, mid=self.mid)


@dataclass
class Session:
    """One connection as the test sees it: the fake client and what each row did in it."""

    client: FakeClient = field(default_factory=FakeClient)
    seen: int = 0  # how much of client.log has been checked
    state: dict[int, str] = field(default_factory=dict)  # seq → inflight | acked | refused
    refusals: dict[int, int] = field(default_factory=dict)
    due: dict[int, float] = field(default_factory=dict)  # seq → when a refused row may go again
    lost: threading.Event = field(default_factory=threading.Event)  # never set: the fake link stays up

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, **_props: Any) -> int | None:
        """As agent.session.Session.publish: the mid, or None when the connection is going."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return int(info.mid) if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def writing(self) -> contextlib.nullcontext[None]:
        """As agent.session.Session.writing; the fake sends at publish."""
        return contextlib.nullcontext()


def _urgent(doc: dict[str, Any]) -> bool:
    return doc["type"] in ("panic", "tamper") and doc["test"] is False


def _as_session(s: Session) -> RealSession:
    """The fake plays the part of ``agent.session.Session`` the sender's round uses."""
    return cast("RealSession", s)


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.dir = workdir / uuid.uuid4().hex[:8]
        cfg = write_config(self.dir, 1, device="d", mqtt={"max_inflight": WINDOW, "drain_rate_per_s": 100_000})
        self.cfg = load_config(cfg).mqtt
        self.now = 1000.0
        self.outbox = Outbox(self.dir / "outbox.db", site="main", device="d")
        self.session = Session()
        self.uplink = self._new_uplink()
        self.urgent: dict[int, str] = {}  # seq → id of every real alarm put
        self.pending: set[int] = set()  # seqs put and not yet deleted by a successful PUBACK
        self.taken: set[str] = set()  # ids the broker accepted (PUBACK success, or received before a drop)
        self.last_seq = 0

    def _new_uplink(self) -> Uplink:
        up = Uplink(
            self.cfg,
            topic_root="campus/main/d",
            outbox=self.outbox,
            status=dict,
            offline=lambda reason: {"state": "offline", "reason": reason},
            mono=lambda: self.now,
        )
        up._events.live = _as_session(self.session)  # as the sender's _serve does once the CONNACK accepted
        return up

    # ---- the sender's round, checked --------------------------------------------------------------

    def _round(self) -> None:
        self.now += _ROUND_S
        self.uplink._send_round(_as_session(self.session))  # the seam: one wake of the sender thread
        self._check_published()

    def _check_published(self) -> None:
        """What went out since the last check (a round, or a hand-off) obeys the order and window rules."""
        s = self.session
        new = [(mid, json.loads(p)) for mid, topic, p in s.client.log[s.seen :] if "/event/" in topic]
        s.seen = len(s.client.log)
        routine_sent = False
        for _mid, doc in new:
            seq = doc["seq"]
            assert s.state.get(seq) not in ("inflight", "acked"), f"seq {seq} published twice in one session"
            if s.state.get(seq) == "refused":
                assert s.due[seq] <= self.now, f"refused seq {seq} retried before its backoff ran out"
            s.state[seq] = "inflight"
            if _urgent(doc):
                assert not routine_sent, f"alarm seq {seq} published after a routine row in the same round"
            else:
                routine_sent = True
        waiting_routine = [q for q, st_ in s.state.items() if st_ == "inflight" and q not in self.urgent]
        assert len(waiting_routine) <= WINDOW - 1, "routine rows took the slot kept for an alarm"
        if routine_sent:  # then no alarm could have gone instead
            for seq in self.urgent.keys() & self.pending:
                st_ = s.state.get(seq)
                waiting = st_ == "inflight" or (st_ == "refused" and s.due[seq] > self.now)
                assert waiting, f"a routine row went out while alarm seq {seq} was ready ({st_})"

    def _put(self, kind: EventType, *, test: bool = False, handed: str = "at_once") -> None:
        e = Event.create(CLOCK, kind, "panic", test=test)
        rows = self.outbox.put_rows([e])
        seq = rows[0].seq
        assert seq > self.last_seq, f"seq went back: {seq} after {self.last_seq}"
        self.last_seq = seq
        self.pending.add(seq)
        if kind.is_alarm and not test:
            self.urgent[seq] = e.id
        self._hand(rows, handed)

    def _hand(self, rows: list[Any], handed: str) -> None:
        """The committing thread's hand-off: at once, after the sender's round, or while a round holds the lock."""
        if handed == "late":
            self._round()  # the sender read the rows first; the hand-off must not send them again
            self.uplink.offer(rows)
            self._check_published()
            return
        if handed == "busy":
            with self.uplink._events.lock:  # a round is running: offer must neither wait nor publish
                before = len(self.session.client.log)
                self.uplink.offer(rows)
                assert len(self.session.client.log) == before, "offer published while the sender held the lock"
        else:
            self.uplink.offer(rows)
            self._check_published()
        self._round()

    def _answer(self, pick: int, reason: int) -> None:
        waiting = self.session.client.waiting
        mid = sorted(waiting)[pick % len(waiting)]
        doc = waiting.pop(mid)
        rc = ReasonCode(PacketTypes.PUBACK, identifier=reason)
        self.uplink._pubacks.put(mid, str(rc) if rc.is_failure else None)  # as the session's on_publish does
        s, seq = self.session, doc["seq"]
        if reason == _SUCCESS:
            s.state[seq] = "acked"
            self.taken.add(doc["id"])
            self.pending.discard(seq)
        else:
            n = s.refusals.get(seq, 0)
            lo, hi = (
                (REFUSED_ALARM_RETRY_MIN_S, REFUSED_ALARM_RETRY_MAX_S)
                if _urgent(doc)
                else (REFUSED_RETRY_MIN_S, REFUSED_RETRY_MAX_S)
            )
            s.refusals[seq] = n + 1
            s.due[seq] = self.now + _ROUND_S + min(hi, lo * 2 ** min(n, 16))
            s.state[seq] = "refused"
        self._round()
        if reason == _SUCCESS:
            assert self.outbox.get(seq) is None, f"seq {seq} still in the outbox after its PUBACK"
        else:
            assert self.outbox.get(seq) is not None, f"refused seq {seq} left the outbox"

    def _end_session(self, received: list[bool]) -> None:
        """The connection drops: in-flight rows may or may not have reached the broker; their PUBACKs are lost."""
        for i, doc in enumerate(self.session.client.waiting.values()):
            if received[i % len(received)]:
                self.taken.add(doc["id"])  # the broker has it; the row stays and is sent again (a duplicate)
        self.uplink._window.reset()  # as the sender's teardown does
        self.session = Session()
        self.uplink._events.live = _as_session(self.session)

    # ---- rules ------------------------------------------------------------------------------------------

    @rule(kind=st.sampled_from([EventType.PANIC, EventType.TAMPER]), handed=st.sampled_from(HANDED))
    def put_alarm(self, kind: EventType, handed: str) -> None:
        self._put(kind, handed=handed)

    @rule(
        kind=st.sampled_from(["test_press", EventType.INPUT_FAULT, EventType.CAMERA_RESTORED]),
        handed=st.sampled_from(HANDED),
    )
    def put_routine(self, kind: EventType | str, handed: str) -> None:
        if kind == "test_press":
            self._put(EventType.PANIC, test=True, handed=handed)
        else:
            assert isinstance(kind, EventType)
            self._put(kind, handed=handed)

    @rule(n=st.integers(2, 8), alarms=st.integers(0, 8), handed=st.sampled_from(HANDED))
    def put_burst(self, n: int, alarms: int, handed: str) -> None:
        """Several events in one commit, as the inputs thread records a burst."""
        events = [
            Event.create(CLOCK, EventType.PANIC if i < alarms else EventType.INPUT_FAULT, "panic") for i in range(n)
        ]
        rows = self.outbox.put_rows(events)
        seqs = [r.seq for r in rows]
        assert seqs == sorted(seqs)
        assert seqs[0] > self.last_seq
        self.last_seq = seqs[-1]
        for e, seq in zip(events, seqs, strict=True):
            self.pending.add(seq)
            if e.type.is_alarm:
                self.urgent[seq] = e.id
        self._hand(rows, handed)

    @precondition(lambda self: self.session.client.waiting)
    @rule(pick=st.integers(0, WINDOW))
    def puback(self, pick: int) -> None:
        self._answer(pick, _SUCCESS)

    @precondition(lambda self: self.session.client.waiting)
    @rule(pick=st.integers(0, WINDOW))
    def refusal(self, pick: int) -> None:
        self._answer(pick, _NOT_AUTHORIZED)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 16.0, 700.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self._round()

    @rule(received=st.lists(st.booleans(), min_size=1, max_size=WINDOW))
    def disconnect(self, received: list[bool]) -> None:
        self._end_session(received)
        self._round()

    @rule(received=st.lists(st.booleans(), min_size=1, max_size=WINDOW))
    def restart(self, received: list[bool]) -> None:
        self._end_session(received)
        self.outbox.close()
        self.outbox = Outbox(self.dir / "outbox.db", site="main", device="d")
        assert self.outbox.pending() == len(self.pending)
        self.uplink = self._new_uplink()  # a fresh send window
        self._round()

    # ---- invariants -------------------------------------------------------------------------------------

    @invariant()
    def no_alarm_lost(self) -> None:
        for seq, eid in self.urgent.items():
            assert eid in self.taken or self.outbox.get(seq) is not None, f"alarm seq {seq} is nowhere"

    def teardown(self) -> None:
        """Enough good rounds: every alarm (and every other row) reaches the broker and leaves the outbox."""
        try:
            for _ in range(4 * len(self.pending) + 20):
                if not self.pending:
                    break
                self.now += REFUSED_RETRY_MAX_S + 1  # every backoff has run out
                self._round()
                while self.session.client.waiting:
                    self._answer(0, _SUCCESS)
            assert not self.pending, f"rows never delivered: {sorted(self.pending)}"
            assert self.outbox.pending() == 0
            assert set(self.urgent.values()) <= self.taken
        finally:
            self.outbox.close()


def test_stateful__alarms_are_never_lost_duplicated_or_queued_behind_routine_rows(tmp_path: Path) -> None:
    class Machine(DeliveryMachine):
        def __init__(self) -> None:
            super().__init__(tmp_path)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
