"""MQTT packet framing and a lean PUBLISH decoder, for the monitor's read path.

Pure functions over bytes already read from the socket; no paho, no I/O.
:mod:`agent.central.reader` uses them so that the common packet at a centre,
a QoS 0 or 1 PUBLISH, costs a few microseconds instead of paho's tens
(measured at 20,000 retained statuses: paho's MQTT 5 ``Properties`` object
alone was about 40 % of the network thread's time).

The decoder is deliberately partial: it returns ``None`` for anything it does
not take (QoS 2, a topic alias, an empty topic or one that is not valid
UTF-8, a property string that is not valid UTF-8 or holds a character MQTT
forbids (paho checks no more of a topic either), an unknown or repeated
property, any length that does not add up), and the caller hands that packet
to paho unchanged, so the odd cases keep paho's own behaviour.  What it does
return is checked, by property tests, to equal what paho makes of the same
bytes (tests/central/test_wire.py).
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLISH = 0x30
_MAX_LENGTH_BYTES = 4
# MQTT 5 PUBLISH properties (section 3.3.2.3) and how each is encoded.
_BYTE, _INT32, _UTF8, _BINARY, _PAIR = range(5)
_PROPERTIES = {
    0x01: _BYTE,  # payload format indicator
    0x02: _INT32,  # message expiry interval
    0x03: _UTF8,  # content type
    0x08: _UTF8,  # response topic
    0x09: _BINARY,  # correlation data
    0x26: _PAIR,  # user property (may repeat)
}
_CONTENT_TYPE, _USER_PROPERTY = 0x03, 0x26
_FIXED = {_BYTE: 1, _INT32: 4}
# Characters MQTT forbids in a UTF-8 string, which paho refuses in properties ([MQTT-1.5.4-2], [MQTT-1.5.4-3]).
_FORBIDDEN = ("\x00", "\ufeff")


class WireError(ValueError):
    """The byte stream is not MQTT: a remaining length longer than four bytes."""


@dataclass(frozen=True, slots=True)
class Publish:
    """What the monitor keeps of a PUBLISH; ``mid`` is 0 at QoS 0."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


def packet_span(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """Where the body of the packet starting at ``pos`` lies: (start, end); ``None`` until it is all in ``buf``.

    Raises:
        WireError: the remaining length runs over four bytes (paho's ``MQTT_ERR_PROTOCOL``).

    """
    length, shift, i = 0, 0, pos + 1
    while True:
        if i >= len(buf):
            return None
        byte = buf[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= 7 * _MAX_LENGTH_BYTES:
            raise WireError("remaining length longer than four bytes")
    end = i + length
    return (i, end) if end <= len(buf) else None


def parse_publish(header: int, body: bytes | bytearray, *, v5: bool) -> Publish | None:
    """A QoS 0/1 PUBLISH as the monitor keeps it, or ``None``: leave this packet to paho."""
    qos = (header >> 1) & 0x03
    if qos > 1 or len(body) < 2:
        return None
    tlen = (body[0] << 8) | body[1]
    pos = 2 + tlen
    if tlen == 0 or pos > len(body):
        return None
    try:
        topic = body[2:pos].decode("utf-8")
    except UnicodeDecodeError:
        return None
    mid = 0
    if qos:
        if pos + 2 > len(body):
            return None
        mid = (body[pos] << 8) | body[pos + 1]
        pos += 2
    content_type: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    if v5:
        if pos < len(body) and body[pos] == 0:  # no properties: the usual case
            pos += 1
        else:
            props = _properties(body, pos)
            if props is None:
                return None
            pos, content_type, pairs = props
    return Publish(topic, bytes(body[pos:]), qos, bool(header & 0x01), mid, content_type, pairs)


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while pos < len(buf) and shift < 7 * _MAX_LENGTH_BYTES:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def _properties(body: bytes | bytearray, pos: int) -> tuple[int, str | None, tuple[tuple[str, str], ...]] | None:
    """(payload start, content type, user properties), or ``None`` for anything not plainly valid."""
    got = _varint(body, pos)
    if got is None:
        return None
    size, pos = got
    end = pos + size
    if end > len(body):
        return None
    seen: set[int] = set()
    content_type: str | None = None
    pairs: list[tuple[str, str]] = []
    while pos < end:
        ident = body[pos]
        kind = _PROPERTIES.get(ident)
        if kind is None or (ident in seen and ident != _USER_PROPERTY):
            return None
        seen.add(ident)
        value = _value(body, pos + 1, end, kind)
        if value is None:
            return None
        pos, text = value
        if ident == _CONTENT_TYPE:
            content_type = text[0]
        elif ident == _USER_PROPERTY:
            pairs.append((text[0], text[1]))
    return end, content_type, tuple(pairs)


def _value(body: bytes | bytearray, pos: int, end: int, kind: int) -> tuple[int, tuple[str, ...]] | None:
    """Skip (or read) one property value ending by ``end``: (next position, its strings)."""
    if kind in _FIXED:
        pos += _FIXED[kind]
        return (pos, ()) if pos <= end else None
    strings: list[str] = []
    for _ in range(2 if kind == _PAIR else 1):
        if pos + 2 > end:
            return None
        n = (body[pos] << 8) | body[pos + 1]
        raw = body[pos + 2 : pos + 2 + n]
        pos += 2 + n
        if pos > end:
            return None
        if kind != _BINARY:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
            if any(c in text for c in _FORBIDDEN):
                return None
            strings.append(text)
    return pos, tuple(strings)
