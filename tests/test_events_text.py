"""The event's text on the button's path: ``ts``, ``id`` and the body, written the cheap way.

``iso_ms`` must write exactly what ``datetime.fromtimestamp(wall, UTC)``
truncated to milliseconds wrote before it (centrals compare and sort these
strings), including the instants where rounding to microseconds carries into
the next second.
"""

from __future__ import annotations

import datetime as dt
import json
import os

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.events import Event, EventType, is_event_id, iso_ms, new_id

YEAR_9999_END = 253402300799.0  # the last second datetime can show
SOAK = os.environ.get("SOAK") == "1"  # the full example counts; make test runs a quarter or a fifth of them


def reference(wall: float) -> str:
    t = dt.datetime.fromtimestamp(wall, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@settings(max_examples=2000 if SOAK else 500, deadline=None)
@given(st.floats(min_value=0.0, max_value=YEAR_9999_END - 1, allow_nan=False))
@example(0.0)
@example(0.9999996)  # rounds up into the next second
@example(0.9999995)  # half-even: stays
@example(1_700_000_000.9995)
@example(1_700_000_000.999_999_7)
@example(951_782_400.0)  # 2000-02-29
def test_iso_ms__matches_datetime(wall: float) -> None:
    assert iso_ms(wall) == reference(wall)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=int(YEAR_9999_END) - 1), st.integers(min_value=0, max_value=999_999))
def test_iso_ms__matches_datetime_at_every_microsecond(sec: int, us: int) -> None:
    wall = sec + us / 1e6
    assert iso_ms(wall) == reference(wall)


def test_iso_ms__before_the_epoch_as_datetime_writes_it() -> None:
    for wall in (-0.5, -1.0, -86_400.25, -0.000_000_4):
        assert iso_ms(wall) == reference(wall)


def test_new_id__is_a_contract_id_and_random() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(is_event_id(i) for i in ids)
    # every hex digit appears in every position over 2000 ids (a uuid4's version nibble would not)
    for pos in range(32):
        assert len({i[pos] for i in ids}) == 16, pos


_TEXT = st.text(max_size=20)  # quotes, backslashes, braces, %, control characters and non-ASCII included
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _TEXT)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=1500 if SOAK else 300, deadline=None)
@given(
    site=_TEXT,
    device=_TEXT,
    type_=st.sampled_from(list(EventType)),
    source=_TEXT,
    test=st.booleans(),
    synced=st.booleans(),
    boot_id=_TEXT,
    mono_ms=st.integers(min_value=0, max_value=2**63),
    event_id=_TEXT,
    ts=_TEXT,
    data=st.dictionaries(_TEXT, st.one_of(_SCALAR, _VALUE), max_size=4),
)
def test_body__is_the_plain_json_text(
    site: str,
    device: str,
    type_: EventType,
    source: str,
    test: bool,
    synced: bool,
    boot_id: str,
    mono_ms: int,
    event_id: str,
    ts: str,
    data: dict[str, object],
) -> None:
    event = Event(type_, source, event_id, ts, synced, boot_id, mono_ms, test=test, data=data)
    body = event.body(site, device)
    assert body == event.plain_body(site, device)
    assert json.loads(body)["data"] == json.loads(json.dumps(data))


def test_body__equal_keys_of_other_types_keep_their_own_text() -> None:
    """1, 1.0 and True are equal dict keys; the cached parts must not mix them up."""
    texts = []
    for value in (1, True, 1.0, "1", 0, False, 0.0):
        event = Event(EventType.PANIC, "gate", new_id(), iso_ms(0.0), True, "b", 1, data={"pin": value})
        texts.append(event.body("s", "d"))
        assert texts[-1] == event.plain_body("s", "d")
    assert len(set(texts)) == 7
    synced_one = Event(EventType.PANIC, "gate", "i", "t", 1, "b", 1)  # type: ignore[arg-type]  # not a bool
    assert synced_one.body("s", "d") == synced_one.plain_body("s", "d")
    assert '"clock_synced":1,' in synced_one.body("s", "d")
