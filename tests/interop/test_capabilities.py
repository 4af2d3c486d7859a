"""What each broker supports, probed with plain paho clients (no agent): the facts behind README's Brokers table.

Each probe's answer must match what the target declares, so a broker upgrade
that changes a capability shows up here before it surprises the agent.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TypedDict

import pytest

from tests.interop.conftest import FIGURES
from tests.interop.targets import Target
from tests.interop.watch import Watcher, connect_result, publish, retained_on
from tests.support.waiting import eventually, never

pytestmark = [pytest.mark.interop, pytest.mark.broker]


def test_capabilities_match_the_declared_ones(live_target: Target) -> None:
    t = live_target
    creds = _creds(t)
    base = f"probe/{uuid.uuid4().hex[:8]}"

    v5 = connect_result(t.port, v5=True, **creds)
    assert connect_result(t.port, v5=False, **creds) == "accepted"

    publish(t.port, f"{base}/r", b'{"kept": true}', v5=t.sub_v5, retain=True, **creds)
    exact = retained_on(t.port, f"{base}/r", **t.watcher_args()) is not None
    wildcard = retained_on(t.port, f"{base}/#", **t.watcher_args()) is not None

    shared = _shared_subscription_splits(t, base)

    FIGURES.append(
        f"{t.name}: MQTT 5 CONNECT {v5}; retained on exact filter {_yn(exact)}, through '#' "
        f"{_yn(wildcard)}; shared subscriptions {shared}"
    )
    assert (v5 == "accepted") == t.speaks_v5, v5
    assert exact, "retained message not delivered on its exact topic"
    assert wildcard == t.retained_wildcard
    assert shared.startswith("yes") == t.shared_subscriptions, shared


def _shared_subscription_splits(t: Target, base: str) -> str:
    """Two members of one $share group: 6 messages must arrive once each, split between them."""
    topic = f"$share/central/{base}/s"
    try:
        members = [Watcher(t.port, (topic,), name=f"member{i}", timeout=5, **t.watcher_args()) for i in (1, 2)]
    except AssertionError:  # no SUBACK within 5 s: a refused subscription is not acknowledged as one
        return "no (SUBSCRIBE refused)"

    def got() -> list[int]:
        return [sum(1 for s in m.seen if s.topic == f"{base}/s") for m in members]  # amqtt adds stray retained ones

    try:
        for i in range(6):
            publish(t.port, f"{base}/s", str(i).encode(), v5=t.sub_v5, **_creds(t))
        # A probe, not an assertion: it listens up to 5 s for the 6 (a broker that takes $share literally
        # delivers none), then 1 s more for the extra copies a broker without shared subscriptions sends.
        with contextlib.suppress(AssertionError):
            eventually(lambda: sum(got()) >= 6, 5.0, "the 6 messages to the group")
            never(lambda: sum(got()) > 6, 1.0, "a copy beyond the 6")
        split = got()
    finally:
        for m in members:
            m.close()
    if sum(split) == 6 and all(split):
        return f"yes (split {split[0]}/{split[1]})"
    return f"no (members got {split[0]} and {split[1]} of 6)"


class _Creds(TypedDict):
    username: str | None
    password: str | None


def _creds(t: Target) -> _Creds:
    return {"username": t.username, "password": t.password}


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"
