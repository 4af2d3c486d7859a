"""A broker that accepts the agent but never sends a PUBACK must not keep it: the next broker is tried.

Found by a hunt: the no-PUBACK check ends such a session cleanly after its
deadline, but the session had lasted ``failover.STABLE_S`` by then, so the sender
counted it as one that worked, reset the backoff and reconnected to the same
broker, resending the alarm into it for ever while a healthy second broker
was never tried.  A session ended by the no-PUBACK check now counts as a
failed attempt: failover goes on and the backoff grows.

The deadline is ``max(STABLE_S, keepalive)``; the test shortens both to 1 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fake5 import Fake5
from tests.support.uplinkrig import Rig, mqtt_cfg
from tests.support.waiting import eventually


def close(*brokers: Fake5) -> None:
    for b in brokers:
        b.close()


def test_uplink__a_broker_that_never_pubacks_is_left_for_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.failover.STABLE_S", 1.0)
    stuck = Fake5(on_publish=lambda *_a: None)  # takes every PUBLISH, never PUBACKs (its storage stuck)
    good = Fake5()
    rig = Rig(tmp_path, mqtt_cfg(stuck.port, good.port, client_id="main/np", keepalive_s=1), "np")
    try:
        rig.put(1)
        rig.uplink.start()
        eventually(
            lambda: len(rig.delivered) == 1,
            8.0,
            lambda: (
                f"the alarm never reached the healthy broker: stuck conns={len(stuck.conns)} "
                f"good conns={len(good.conns)}"
            ),
        )
        assert len(stuck.conns) == 1, "one session on the stuck broker, then the next broker"
        assert any(b"panic" in p for _n, _t, p in stuck.published), "the alarm went to the stuck broker first"
    finally:
        rig.close()
        close(stuck, good)
