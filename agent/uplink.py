"""The link to the broker: the only module that imports paho-mqtt.

One sender thread owns the whole connection life cycle.  Each connection
attempt builds a fresh paho client (``reconnect_on_failure=False``), so paho's
in-memory queue never outlives a connection and is never what we rely on: after
every reconnect the sender re-publishes whatever is still in the outbox, oldest
first.  A row is deleted only when its PUBACK arrives with a success reason
code; an MQTT 5 broker that refuses a publish (reason >= 0x80) still makes
paho report it as "published", so refusals are kept and retried.

Reconnects use exponential backoff with full jitter, so hundreds of Pis do not
hammer a restarted broker in lock-step, and walk the broker list on failure.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.brokers import backoff_delay, describe_connect_error, tls_context
from agent.config.model import BrokerAddress, MqttConfig
from agent.errors import OutboxError
from agent.outbox import Outbox, OutboxRow
from agent.sendwindow import SendWindow

log = logging.getLogger(__name__)

StatusProvider = Callable[[], dict[str, Any]]
CommandHandler = Callable[..., None]  # (name, payload, *, retained)

_SHUTDOWN_ACK_TIMEOUT_S = 2.0
_IDLE_WAKE_S = 1.0  # granularity of waits between connection attempts (stop stays responsive)
_IDLE_S = 5.0  # longest wait while connected with nothing to send; any news wakes the sender at once


@dataclass(frozen=True)
class LinkState:
    """What the status document's ``link`` section and the CLI show."""

    connected: bool
    broker: str | None
    connected_since: float | None
    reconnects: int
    last_error: str | None
    inflight: int
    published: int
    delivered: int
    refused: int


class _Session:
    """One connection's paho client and the events its callbacks raise."""

    def __init__(self, client: mqtt.Client, broker: BrokerAddress) -> None:
        self.client = client
        self.broker = broker
        self.connack = threading.Event()
        self.refused: str | None = None
        self.lost = threading.Event()
        self.lost_reason: str | None = None


class Uplink:
    """Drains the outbox to the broker and carries status, replies and commands.

    Args:
        cfg: the ``mqtt`` section of the config.
        topic_root: ``{prefix}/{site}/{device}``.
        outbox: where events come from and where PUBACKs are recorded.
        status: returns a fresh status document (birth message and heartbeats).
        offline: returns the ``offline`` document for a ``reason``.
        on_command: called on paho's thread with (name, payload) per command.
        on_link: called when the link goes up or down.
        on_delivered: called on the sender thread for every acknowledged row.
        held: events held in memory because the outbox cannot store them
            (agent/recorder.py); sent directly after the outbox rows while the
            link is up, acknowledged through ``on_delivered`` and never acked
            in the outbox by the sender.

    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        topic_root: str,
        outbox: Outbox,
        status: StatusProvider,
        offline: Callable[[str], dict[str, Any]],
        on_command: CommandHandler | None = None,
        on_link: Callable[[LinkState], None] | None = None,
        on_delivered: Callable[[OutboxRow], None] | None = None,
        held: Callable[[], list[OutboxRow]] | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.root = topic_root
        self.outbox = outbox
        self._status = status
        self._offline = offline
        self._on_command = on_command
        self._on_link = on_link
        self._on_delivered = on_delivered
        self._held = held
        self._held_inflight: dict[int, OutboxRow] = {}  # paho mid -> held row; reset with the window
        self._held_refused: set[str] = set()  # ids the broker refused on this connection: not again on it
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._wall = wall
        self._mono = mono
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._acks: queue.SimpleQueue[tuple[int, ReasonCode | None]] = queue.SimpleQueue()
        self._status_slot: dict[str, Any] | None = None
        self._replies: deque[tuple[str, bytes]] = deque(maxlen=100)
        self._slot_lock = threading.Lock()
        self._session: _Session | None = None
        self._broker_index = 0
        self._connected_since: float | None = None
        self._reconnects = 0
        self._sessions = 0
        self._last_error: str | None = None
        self._window = SendWindow(outbox, max_inflight=cfg.max_inflight, rate_per_s=cfg.drain_rate_per_s)
        self._published = 0
        self._delivered = 0
        self._refused = 0
        self.progress = self._mono()

    # ---- public surface ------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="uplink-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Tell the sender a new row is in the outbox (called after put)."""
        self._wake.set()

    def publish_status(self, doc: dict[str, Any]) -> None:
        """Publish ``doc`` retained; only the latest waiting one is ever sent."""
        with self._slot_lock:
            self._status_slot = doc
        self._wake.set()

    def publish(self, subtopic: str, doc: dict[str, Any]) -> None:
        """Publish a small document (a command reply) under the topic root, QoS 1."""
        with self._slot_lock:
            self._replies.append((f"{self.root}/{subtopic}", _encode(doc)))
        self._wake.set()

    def state(self) -> LinkState:
        s = self._session
        return LinkState(
            connected=self._connected_since is not None,
            broker=str(s.broker) if s is not None else None,
            connected_since=self._connected_since,
            reconnects=self._reconnects,
            last_error=self._last_error,
            inflight=len(self._window),
            published=self._published,
            delivered=self._delivered,
            refused=self._refused,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Say ``offline``/``shutdown`` if connected, then disconnect cleanly."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __repr__(self) -> str:
        st = self.state()
        where = f"connected to {st.broker}" if st.connected else "disconnected"
        return f"<Uplink {self.root} {where} inflight={st.inflight}>"

    # ---- the sender thread ---------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self.progress = self._mono()
            broker = self.cfg.brokers[self._broker_index % len(self.cfg.brokers)]
            try:
                was_up = self._connect_and_serve(broker)
            except Exception:  # e.g. an ack failing past the outbox's busy timeout: the rows stay, sent again
                log.exception("uplink: the connection to %s failed unexpectedly; reconnecting", broker)
                self._last_error, was_up = "internal error (see the log)", False
            if self._stopping.is_set():
                break
            if was_up:
                attempt = 0
            else:
                attempt += 1
                self._broker_index += 1
            nxt = self.cfg.brokers[self._broker_index % len(self.cfg.brokers)]
            delay = backoff_delay(attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
            moving = f" on {nxt}" if nxt != broker else ""
            log.warning(
                "broker %s %s (%s); %d events buffered; retrying%s in %.1f s",
                broker, "connection lost" if was_up else "unreachable", self._last_error,
                self.outbox.pending(), moving, delay,
            )
            self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        deadline = self._mono() + seconds
        while not self._stopping.is_set():
            self.progress = self._mono()
            left = deadline - self._mono()
            if left <= 0:
                return
            self._stopping.wait(min(left, _IDLE_WAKE_S))

    def _make_client(self) -> mqtt.Client:
        v5 = self.cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.cfg.connect_timeout_s
        client.max_inflight_messages_set(self.cfg.max_inflight + 16)
        client.max_queued_messages_set(0)
        client.will_set(f"{self.root}/status", _encode(self._offline("lost")), qos=1, retain=True)
        if self.cfg.username is not None:
            pw = self.cfg.password.reveal() if self.cfg.password is not None else None
            client.username_pw_set(self.cfg.username, pw)
        if self.cfg.tls is not None:
            client.tls_set_context(tls_context(self.cfg))
        return client

    def _connect_and_serve(self, broker: BrokerAddress) -> bool:
        """Run one connection from attempt to end; True if it got a CONNACK."""
        try:
            client = self._make_client()
        except (OSError, ValueError) as exc:
            self._last_error = f"cannot set up the client: {exc}"
            return False
        s = _Session(client, broker)
        self._wire(s)
        self._session = s
        try:
            client.connect(broker.host, broker.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            self._last_error = describe_connect_error(exc, self.cfg.connect_timeout_s)
            return False
        client.loop_start()
        try:
            if not s.connack.wait(self.cfg.connect_timeout_s) or s.refused is not None:
                self._last_error = s.refused or f"no CONNACK within {self.cfg.connect_timeout_s:g} s"
                return False
            self._serve(s)
            return True
        finally:
            self._teardown(s)

    def _wire(self, s: _Session) -> None:
        c = s.client

        def on_connect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            if rc.is_failure:
                s.refused = (f"broker refused the connection: {rc}; "
                             "check mqtt.username, password_file or the client certificate")
            s.connack.set()

        def on_disconnect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            # Fires once per connection; also after a refused CONNACK, where connack is already set.
            s.lost_reason = str(rc)
            s.lost.set()
            s.connack.set()
            self._wake.set()

        def on_publish(_c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            self._acks.put((mid, rc))
            self._wake.set()

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            name = msg.topic[len(self.root) + len("/cmd/") :]
            if self._on_command is not None:
                try:
                    self._on_command(name, bytes(msg.payload), retained=bool(msg.retain))
                except Exception:
                    log.exception("command %r could not be handled; ignoring it", name)

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        c.on_publish = on_publish
        c.on_message = on_message

    def _serve(self, s: _Session) -> None:
        self._connected_since = self._wall()
        self._sessions += 1
        if self._sessions > 1:
            self._reconnects += 1
        self._last_error = None
        self._window.reset()
        with self._slot_lock:
            self._status_slot = None
        log.info("connected to broker %s; %d events to send", s.broker, self.outbox.pending())
        s.client.subscribe(f"{self.root}/cmd/+", qos=1)
        self._publish_raw(s, f"{self.root}/status", _encode(self._status()), retain=True)
        self._notify_link()
        while not s.lost.is_set():
            self.progress = self._mono()
            if self._stopping.is_set():
                self._say_goodbye(s)
                return
            self._wake.wait(self._send_round(s))
            self._wake.clear()
        self._last_error = f"connection lost: {s.lost_reason}"

    def _send_round(self, s: _Session) -> float:
        """Process acks, send status/replies and fill the window; return how long to wait."""
        self._process_acks()
        try:
            wait = self._fill_window(s)  # events first: an alarm never queues behind a status document
        except (OutboxError, sqlite3.Error) as exc:  # the outbox cannot be read: held events still go
            log.error("outbox: %s; sending only the events held in memory", exc)  # noqa: TRY400 - says it all
            wait = _IDLE_S
        self._send_held(s)
        with self._slot_lock:
            status, self._status_slot = self._status_slot, None
            replies = list(self._replies)
            self._replies.clear()
        if status is not None:
            self._publish_raw(s, f"{self.root}/status", _encode(status), retain=True)
        for topic, payload in replies:
            self._publish_raw(s, topic, payload, retain=False)
        return wait

    def _fill_window(self, s: _Session) -> float:
        """Publish what the window allows, real alarms first; return how long to wait."""
        now = self._mono()
        for row in self._window.take(now):
            info = s.client.publish(f"{self.root}/event/{row.type}", row.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return _IDLE_S  # the connection is going; on_disconnect wakes us, the next session resends
            self._window.sent(info.mid, row)
            self._published += 1
        return self._window.wait_s(now, _IDLE_S)

    def _send_held(self, s: _Session) -> None:
        """Publish events held in memory (not in the outbox) that are not in flight on this connection."""
        if self._held is None:
            return
        skip = {r.id for r in self._held_inflight.values()} | self._held_refused
        for row in self._held():
            if row.id not in skip:
                info = s.client.publish(f"{self.root}/event/{row.type}", row.payload, qos=1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
                self._held_inflight[info.mid] = row
                self._published += 1

    def _process_acks(self) -> None:
        done: list[OutboxRow] = []
        now = self._mono()
        while True:
            try:
                mid, rc = self._acks.get_nowait()
            except queue.Empty:
                break
            row, retry_in = self._window.settle(mid, refused=_is_refusal(rc), now=now)
            held = self._held_inflight.pop(mid, None)
            if held is not None and _is_refusal(rc):
                self._held_refused.add(held.id)  # stays held; sent again on the next connection
            elif held is not None and self._on_delivered is not None:
                self._delivered += 1
                self._on_delivered(held)
            if row is None:
                continue
            if retry_in is None:
                done.append(row)
                continue
            self._refused += 1
            log.log(  # a refused real alarm is the worst thing the link can report
                logging.CRITICAL if row.urgent else logging.ERROR,
                "broker refused %s event seq %d (%s); kept in the outbox, retrying in %.0f s; "
                "check the broker's ACL for %s/event/#",
                row.type, row.seq, rc, retry_in, self.root,
            )
        if done:
            self.outbox.ack(r.seq for r in done)
            self._delivered += len(done)
            for row in done:
                if self._on_delivered is not None:
                    self._on_delivered(row)

    def _publish_raw(self, s: _Session, topic: str, payload: bytes, *, retain: bool) -> int:
        info = s.client.publish(topic, payload, qos=1, retain=retain)
        return int(info.mid)

    def _say_goodbye(self, s: _Session) -> None:
        mid = self._publish_raw(s, f"{self.root}/status", _encode(self._offline("shutdown")), retain=True)
        deadline = self._mono() + _SHUTDOWN_ACK_TIMEOUT_S
        while self._mono() < deadline and not s.lost.is_set():
            try:
                got, rc = self._acks.get(timeout=0.05)
            except queue.Empty:
                continue
            if got == mid:
                break
            row, retry_in = self._window.settle(got, refused=_is_refusal(rc), now=self._mono())
            if row is not None and retry_in is None:
                self.outbox.ack([row.seq])
        s.client.disconnect()
        log.info("disconnected from broker %s (shutdown)", s.broker)

    def _teardown(self, s: _Session) -> None:
        was_up = self._connected_since is not None
        self._connected_since = None
        if not s.lost.is_set():
            s.client.disconnect()
        s.client.loop_stop()
        self._window.reset()
        self._held_inflight.clear()
        self._held_refused.clear()
        while True:  # acks of this client's mids must not match the next client's
            try:
                self._acks.get_nowait()
            except queue.Empty:
                break
        if was_up:
            self._notify_link()

    def _notify_link(self) -> None:
        if self._on_link is not None:
            try:
                self._on_link(self.state())
            except Exception:
                log.exception("link-change handler failed; carrying on")


def _is_refusal(rc: ReasonCode | None) -> bool:
    """A PUBACK reason >= 0x80 (MQTT 5): the broker did not take the message, whatever paho says."""
    return rc is not None and rc.is_failure


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


__all__ = ["LinkState", "Uplink", "backoff_delay", "describe_connect_error", "tls_context"]
