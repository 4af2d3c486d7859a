"""The failover rules on their own (agent/failover.py): which broker next, and how long to wait.

Any sequence of attempt outcomes, against a model written out here: a session
that worked keeps its broker and resets the backoff; anything else moves to
the next broker and grows it, within ``reconnect_max_s``.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.failover import STABLE_S, Ended, Failover, held_up
from agent.session import ConnectFailure
from tests.support.uplinkrig import mqtt_cfg


class _Ceiling(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


ENDINGS = st.one_of(
    st.builds(lambda: Ended(ConnectFailure("refused", "CONNACK refused"))),
    st.builds(
        Ended,
        st.none(),
        st.floats(0.0, 3 * STABLE_S),
        st.sampled_from([None, 0x00, 0x8E, 0x9C, 0x9D]),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ENDINGS, max_size=30), st.integers(1, 4))
def test_failover__any_outcomes_follow_the_model(endings: list[Ended], brokers: int) -> None:
    cfg = mqtt_cfg(*range(1883, 1883 + brokers), client_id="main/gate-1", reconnect_min_s=1.0, reconnect_max_s=60.0)
    fo = Failover(cfg, _Ceiling())
    index = failed = 0
    for ended in endings:
        delay = fo.after(ended)
        worked = (
            ended.failure is None
            and ended.lasted_s >= STABLE_S
            and ended.lost_code not in (0x9C, 0x9D)
            and not ended.overdue
        )
        assert held_up(ended) is worked
        if worked:
            failed = 0
        else:
            failed += 1
            index += 1
        assert fo.broker == cfg.brokers[index % brokers]
        if failed:
            assert delay == min(60.0, 1.0 * 2**failed), "full jitter at its ceiling: the backoff's bound"
        else:
            assert delay <= 1.0, "soon, after a session that worked"


def test_failover__a_broker_that_keeps_an_event_unacknowledged_is_left_for_the_next() -> None:
    cfg = mqtt_cfg(1883, 1884, client_id="main/gate-1", reconnect_min_s=1.0, reconnect_max_s=60.0)
    fo = Failover(cfg, _Ceiling())
    fo.after(Ended(None, lasted_s=10 * STABLE_S, overdue=True))
    assert fo.broker == cfg.brokers[1]
