"""A photo over the broker's packet size limit is dropped and reported, never sent again and again.

mosquitto closes the connection at a packet over ``max_packet_size``; before
this, the photo stayed stored and went again at every connection, so the
agent reconnected for ever and its retained status stayed at the will's
``offline`` (a hunt found it with 64 KiB, the shipped config's limit then, and a
200 kB photo).  Under MQTT 5 the broker announces its limit in the CONNACK and
the photo is not sent; under 3.1.1 it is dropped after ``STRIKES`` connections
ended with it in flight.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.photosend import PhotoDrain
from agent.photostore import Photo, PhotoStore
from agent.uplink import Uplink
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.snapcam import make_jpeg
from tests.support.uplinkrig import mqtt_cfg
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker
ROOT = "campus/main/gate-1"


@pytest.mark.parametrize(("protocol", "reason"), [("5", "too_large"), ("3.1.1", "refused")])
def test_photo_over_the_brokers_packet_limit__dropped_reported_and_the_link_settles(
    tmp_path: Path, protocol: str, reason: str
) -> None:
    b = Broker(tmp_path / "b", listener_extra="allow_anonymous true\nmax_packet_size 65536\n").start()
    store = PhotoStore(tmp_path / "photos.db")
    failed: list[tuple[str, str, str, str]] = []
    drain = PhotoDrain(store, ROOT, on_failed=lambda *a: failed.append(a))
    store.put(Photo("e" * 32, "gate-cam", make_jpeg(200_000, 1), taken=time.time()))
    store.put(Photo("f" * 32, "gate-cam", make_jpeg(20_000, 2), taken=time.time()))
    ob = Outbox(tmp_path / "ob.db", site="main", device="gate-1")
    central = Central(b.port, topics=(f"{ROOT}/#",))
    up = Uplink(
        mqtt_cfg(b.port, client_id="main/gate-1", protocol=protocol),
        topic_root=ROOT,
        outbox=ob,
        status=lambda: {"v": 1, "state": "online"},
        offline=lambda r: {"v": 1, "state": "offline", "reason": r},
        photos=drain,
    )
    try:
        up.start()
        eventually(lambda: not store.pending(), 30.0, "both photos settled")
        assert [f[:3] for f in failed] == [("e" * 32, "gate-cam", reason)]
        central.wait_for(lambda m: m.topic == f"{ROOT}/snapshot/{'f' * 32}", timeout=10)
        if protocol == "5":
            assert up.state().reconnects == 0, "the photo was never sent"
        # 3.1.1: at least STRIKES connections ended with it in flight; under load a connection may also end
        # before it is out, so their number is not exact
        assert up.state().connected
    finally:
        up.stop()
        central.close()
        ob.close()
        store.close()
        b.stop()
