"""When does this device's client certificate expire?  Read from the PEM file itself.

The standard library cannot read a certificate it is not verifying, and the
agent should not need a crypto package for one date, so this walks the DER
structure just far enough: Certificate → tbsCertificate → validity → notAfter.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path

from agent.errors import ConfigError

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _UTCTIME, _GENERALIZEDTIME = 0x30, 0x17, 0x18


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, start of value, end of value) of the element at ``pos``."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, pos, end


def _time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == _UTCTIME:
        parsed = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")  # noqa: DTZ007 - the Z is UTC, set below
    elif tag == _GENERALIZEDTIME:
        parsed = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")  # noqa: DTZ007
    else:
        raise ValueError(f"unexpected time tag {tag:#x}")
    return parsed.replace(tzinfo=dt.UTC)


def not_after(path: Path) -> dt.datetime:
    """The expiry time of the first certificate in a PEM file.

    Raises:
        ConfigError: the file is unreadable or holds no certificate we can read.

    """
    try:
        match = _PEM.search(path.read_bytes())
        if match is None:
            raise ValueError("no PEM certificate in it")
        der = base64.b64decode(b"".join(match.group(1).split()))
        tag, pos, _ = _tlv(der, 0)  # Certificate
        tag, pos, _ = _tlv(der, pos)  # tbsCertificate
        if tag != _SEQUENCE:
            raise ValueError("not a certificate")
        tag, start, end = _tlv(der, pos)
        if tag == 0xA0:  # [0] explicit version
            pos = end
        for _skip in range(4):  # serialNumber, signature, issuer, then validity
            tag, start, end = _tlv(der, pos)
            if _skip < 3:
                pos = end
        tag, start, end = _tlv(der, start)  # notBefore
        tag, start, end = _tlv(der, end)  # notAfter
        return _time(tag, der[start:end])
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the certificate's expiry date ({exc})") from exc


WARN_DAYS = 30  # how long before expiry the agent and doctor start warning


def expiry_warning(path: Path, now: dt.datetime, days: int = WARN_DAYS) -> str | None:
    """A one-line warning when the certificate expires within ``days`` (or has)."""
    end = not_after(path)
    left = end - now
    if left.total_seconds() <= 0:
        return f"client certificate {path} EXPIRED on {end:%Y-%m-%d}; the broker will refuse it: renew it now"
    if left <= dt.timedelta(days=days):
        n = left.days
        return f"client certificate {path} expires on {end:%Y-%m-%d} (in {n} day{'' if n == 1 else 's'}); renew it"
    return None
