"""Throwaway PKI for tests: CA, server cert (127.0.0.1/localhost), client certs."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def _write(dirpath: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cp, kp = dirpath / f"{stem}.crt", dirpath / f"{stem}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,  # "BEGIN PRIVATE KEY"
            serialization.NoEncryption(),
        )
    )
    kp.chmod(0o600)
    return Issued(cert, key, cp, kp)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(b: x509.CertificateBuilder, days: float = 2.0, start_days_ago: float = 0.0) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    begin = now - dt.timedelta(minutes=5) - dt.timedelta(days=start_days_ago)
    return b.not_valid_before(begin).not_valid_after(now + dt.timedelta(days=days))


def make_ca(dirpath: Path, cn: str = "Test CA", stem: str = "ca") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(Path(dirpath), stem, cert, key)


def issue(
    ca: Issued,
    dirpath: Path,
    cn: str,
    stem: str,
    *,
    server: bool,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
    days: float = 2.0,
    start_days_ago: float = 0.0,
) -> Issued:
    """Issue a certificate; ``days`` < 0 gives an expired one (valid until that many days ago)."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        _validity(x509.CertificateBuilder(), days, start_days_ago)
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            ),
            critical=False,
        )
    cert = b.sign(ca.key, hashes.SHA256())
    return _write(Path(dirpath), stem, cert, key)


def make_pki(dirpath: Path, devices: tuple[str, ...] = ("gate-north-1", "gate-south-2")) -> dict[str, Issued]:
    dirpath = Path(dirpath)
    ca = make_ca(dirpath)
    pki = {"ca": ca, "server": issue(ca, dirpath, "localhost", "server", server=True)}
    for d in devices:
        pki[d] = issue(ca, dirpath, d, d, server=False)
    rogue = make_ca(dirpath, "Rogue CA", stem="rogue-ca")
    pki["rogue-ca"] = rogue
    pki["rogue"] = issue(rogue, dirpath, devices[0], "rogue-client", server=False)
    return pki


def device_pki(dirpath: Path, device: str) -> dict[str, Issued]:
    """The TLS suite's PKI: ``make_pki`` plus the device's own certificates in the shipped ACL's form.

    Extra names: ``gate-south-2`` (another device), ``expired`` (a server certificate
    past its end), ``otherhost`` (a server certificate for another name) and ``soon``
    (the device's client certificate, 10 days from expiry).
    """
    d = Path(dirpath)
    p = make_pki(d, devices=(device, "gate-south-2", "central"))
    # device CNs are {site}/{id}, as the shipped ACL expects (docs/install.md, "Broker identities")
    p[device] = issue(p["ca"], d, f"main/{device}", device, server=False, days=365)  # far from expiry: no warning
    p["gate-south-2"] = issue(p["ca"], d, "main/gate-south-2", "gate-south-2", server=False)
    p["expired"] = issue(p["ca"], d, "localhost", "expired", server=True, days=-1, start_days_ago=3)
    p["otherhost"] = issue(p["ca"], d, "otherhost", "otherhost", server=True, dns=("otherhost.lan",), ips=())
    p["soon"] = issue(p["ca"], d, f"main/{device}", "soon", server=False, days=10)
    return p
