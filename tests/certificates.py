"""Certificates made at test time with ``cryptography`` (no keys are committed): CAs, and the certificates they sign.

``Authority.create(folder, name)`` makes a CA; ``authority.issue(name, server=...)`` a certificate
it signs, valid for 127.0.0.1 and localhost, as a ``Pair`` of PEM files. ``self_signed(folder)``
is a server certificate that is its own root. Keys are P-256, valid for a day.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NAMES = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
"""Where a test server listens: every server certificate is valid for both."""


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


def _write(folder: Path, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pair.key.chmod(0o600)
    return pair


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate (what a peer trusts) and key (what signs)."""

    name: str
    folder: Path
    key: ec.EllipticCurvePrivateKey
    pair: Pair

    @classmethod
    def create(cls, folder: Path, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (_builder(name, name, key)
                       .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                       .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                    encipher_only=False, decipher_only=False), critical=True)
                       .sign(key, hashes.SHA256()))
        return cls(name, folder, key, _write(folder, name, certificate, key))

    @property
    def cert(self) -> Path:
        """The CA's certificate: what a peer that trusts this CA is given."""
        return self.pair.cert

    def issue(self, name: str, *, server: bool) -> Pair:
        """A certificate this CA signs, for a server (serverAuth) or a client (clientAuth), valid for 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        certificate = (_builder(name, self.name, key)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                       .add_extension(NAMES, critical=False)
                       .sign(self.key, hashes.SHA256()))
        return _write(self.folder, name, certificate, key)


def self_signed(folder: Path, name: str = "localhost") -> Pair:
    """A server certificate for 127.0.0.1 and localhost that is its own root: a client trusts it by being given it."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (_builder(name, name, key)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(NAMES, critical=False)
                   .sign(key, hashes.SHA256()))
    return _write(folder, name, certificate, key)


@dataclass(frozen=True)
class Pki:
    """Certificates for mutual TLS: a CA, a server and a client certificate it signs, and a client
    certificate signed by another CA (``stranger``)."""

    ca: Path
    server: Pair
    client: Pair
    stranger: Pair

    @classmethod
    def create(cls, folder: Path) -> Pki:
        ca, other = Authority.create(folder, "test-ca"), Authority.create(folder, "other-ca")
        return cls(ca.cert, ca.issue("server", server=True), ca.issue("client", server=False), other.issue("stranger", server=False))

