"""Building the central tools' paho clients, and ending a persistent session: the parts of the link with no state.

:class:`~agent.central.link.CentralLink` owns the connection and its
callbacks; this module makes a client with the right id, MQTT version,
session kind, TLS and credentials, the CONNECT and DISCONNECT properties
of a persistent MQTT 5 session, and ends an MQTT 3.1.1 one.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.central.settings import LinkSettings, tls_context
from agent.config.model import BrokerAddress

KEEPALIVE_S = 30
VERSIONS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}


def new_client(settings: LinkSettings, client_id: str, version: str, *, clean: bool) -> mqtt.Client:
    """A paho client with our id, version, TLS and credentials, and no callbacks.

    ``clean`` is MQTT 3.1.1's ``clean_session``; under MQTT 5 the session
    kind goes with the CONNECT (:func:`connect_properties`).
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=VERSIONS[version],
        clean_session=clean if version == "3.1.1" else None,
    )
    client.connect_timeout = settings.connect_timeout_s
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if settings.username is not None:
        secret = settings.password.reveal() if settings.password is not None else None
        client.username_pw_set(settings.username, secret)
    if settings.tls is not None:
        client.tls_set_context(tls_context(settings.tls))
    return client


def connect_properties(expiry_s: int) -> Properties:
    """MQTT 5 CONNECT properties: how long the broker keeps our session (and queues for us) once we are gone."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    return props


def leaving_properties() -> Properties:
    """MQTT 5 DISCONNECT properties of a clean close: the session ends now, nothing is queued for us any more."""
    props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    return props


def forget_session(settings: LinkSettings, client_id: str, broker: BrokerAddress) -> None:
    """End an MQTT 3.1.1 persistent session, which has no expiry: a clean connect with its id discards it."""
    answered = threading.Event()
    client = new_client(settings, client_id, "3.1.1", clean=True)
    client.on_connect = lambda *_a: answered.set()
    try:
        client.connect(broker.host, broker.port, keepalive=KEEPALIVE_S)
    except (OSError, ValueError):
        return  # the broker's own limit will do it (mosquitto: persistent_client_expiration)
    client.loop_start()
    try:
        answered.wait(settings.connect_timeout_s)
    finally:
        client.disconnect()  # closes the socket too when no CONNACK came
        client.loop_stop()
