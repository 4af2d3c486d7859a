"""The doctor's own short MQTT connection: the technician's one paho importer (the agent's is ``session.py``).

A :class:`MqttProbe` connects once with a client id of ``{client_id}/doctor``
(the agent's own id would make the broker drop the running agent: session
takeover), never reconnects and sends no will.  paho's callbacks only put
:class:`Note` values on a queue, so reason codes leave here as numbers and
words and the checks wait on one queue with one deadline.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.brokers import tls_context
from agent.closing import Closing
from agent.config.model import BrokerAddress, MqttConfig

_KEEPALIVE_S = 30


@dataclass(frozen=True)
class Note:
    """One paho callback, as plain values: kind is connack, suback, puback, message or lost."""

    kind: str
    code: int = 0
    words: str = ""
    failure: bool = False
    mid: int = 0
    payload: bytes = b""
    retain_available: bool = True  # MQTT 5 CONNACK property Retain Available


def _note(kind: str, rc: ReasonCode, mid: int = 0) -> Note:
    return Note(kind, code=int(rc.value), words=str(rc), failure=bool(rc.is_failure), mid=mid)


def _connack(rc: ReasonCode, props: Any) -> Note:
    note = _note("connack", rc)
    if props is not None and getattr(props, "RetainAvailable", 1) == 0:
        return Note(note.kind, note.code, note.words, note.failure, retain_available=False)
    return note


class MqttProbe(Closing):
    """One short doctor connection; paho's callbacks only put :class:`Note` values on a queue.

    ``protocol`` is ``5`` or ``3.1.1`` (``auto`` is the caller's loop over both).
    """

    def __init__(self, cfg: MqttConfig, timeout_s: float, protocol: str = "5") -> None:
        v5 = protocol == "5"
        self.protocol = protocol
        self.answer: Note | None = None  # what the CONNECT got: a connack or lost note, None if nothing yet
        self.notes: queue.Queue[Note] = queue.Queue()
        self.client_id = f"{cfg.client_id}/doctor"  # '/' is in no device id: never another device's id
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        self._client.connect_timeout = timeout_s
        if cfg.username is not None:
            self._client.username_pw_set(cfg.username, cfg.password.reveal() if cfg.password is not None else None)
        if cfg.tls is not None:
            self._client.tls_set_context(tls_context(cfg))
        self._looping = False
        self._closed = False
        put = self.notes.put
        self._client.on_connect = lambda _c, _u, _f, rc, props: put(_connack(rc, props))
        self._client.on_disconnect = lambda _c, _u, _f, rc, _p: put(_note("lost", rc))
        self._client.on_subscribe = lambda _c, _u, mid, rcs, _p: put(
            next((_note("suback", rc, mid) for rc in rcs if rc.is_failure), Note("suback", mid=mid))
        )
        self._client.on_publish = lambda _c, _u, mid, rc, _p: put(_note("puback", rc, mid))
        self._client.on_message = lambda _c, _u, msg: put(Note("message", payload=bytes(msg.payload)))

    def connect(self, broker: BrokerAddress) -> None:
        """Start the connection; the CONNACK arrives as a note.  Raises what socket and ssl raise."""
        self._client.connect(broker.host, broker.port, keepalive=_KEEPALIVE_S)
        self._client.loop_start()
        self._looping = True

    def subscribe(self, topic: str) -> int | None:
        rc, mid = self._client.subscribe(topic, qos=1)
        return mid if rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def publish(self, topic: str, payload: bytes) -> int | None:
        info = self._client.publish(topic, payload, qos=1)
        return int(info.mid) if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def wait(self, deadline: float, *kinds: str) -> Note | None:
        """The next note of one of ``kinds`` (a lost connection always counts), or None at the deadline."""
        while (left := deadline - time.monotonic()) > 0:
            try:
                note = self.notes.get(timeout=left)
            except queue.Empty:
                return None
            if note.kind in kinds or note.kind == "lost":
                return note
        return None

    def close(self) -> None:
        self._closed = True
        if self._looping:
            self._looping = False
            self._client.disconnect()
            self._client.loop_stop()

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_id(self) -> str:
        return self.client_id

    def _repr_state(self) -> str:
        return "connected" if self._looping else "not connected"
