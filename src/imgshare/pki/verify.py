"""Looking at certificates: a summary for people, and the client's check of a server.

``describe_certificate`` feeds ``imgshare certs show``; ``verify_server_certificate``
is what the application handshake uses to trust the server's signing key. This
module logs and raises, never prints.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, Subject, VerificationError

from imgshare.errors import CertificateError

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


@dataclass(frozen=True)
class CertificateInfo:
    """What a person needs to recognise and check a certificate (``certs show``)."""

    subject: str
    issuer: str
    serial: int
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    expired: bool
    key_type: str
    fingerprint_sha256: str
    is_ca: bool
    extended_key_usage: tuple[str, ...]


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint as ``AB:CD:...``, the form ``openssl x509`` prints."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _san_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    return f"{type(name).__name__}:{name.value}"


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve.name
        return f"ECDSA {_CURVE_NAMES.get(curve, curve)} ({curve})"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bit"
    return type(key).__name__


def describe_certificate(cert: x509.Certificate, now: datetime | None = None) -> CertificateInfo:
    """Summarise a certificate for people: names, validity, key and fingerprint."""
    san: Iterable[x509.GeneralName] = _extension(cert, x509.SubjectAlternativeName) or ()
    constraints = _extension(cert, x509.BasicConstraints)
    eku: Iterable[x509.ObjectIdentifier] = _extension(cert, x509.ExtendedKeyUsage) or ()
    moment = now if now is not None else datetime.now(UTC)
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        sans=tuple(_san_text(name) for name in san),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        expired=moment > cert.not_valid_after_utc,
        key_type=_describe_key(cert.public_key()),
        fingerprint_sha256=fingerprint_sha256(cert),
        is_ca=constraints is not None and constraints.ca,
        extended_key_usage=tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku),
    )


def verify_server_certificate(
    cert_der: bytes,
    trust_anchors: Sequence[x509.Certificate],
    hostname: str,
    *,
    now: datetime | None = None,
) -> x509.Certificate:
    """Check a server's leaf certificate the way a TLS client would; return it.

    The application handshake uses this to bind the server's signing key to a
    certificate chaining to our CA, valid now, with EKU serverAuth and a SAN that
    names ``hostname`` (DNS name or IP address). Raises ``CertificateError``.
    """
    if not trust_anchors:
        raise CertificateError("no trusted CA certificate to check the server against")
    try:
        leaf = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise CertificateError("the server certificate is not valid DER") from exc
    host = hostname.removeprefix("[").removesuffix("]")
    subject: Subject
    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        try:
            subject = x509.DNSName(host.lower())
        except ValueError as exc:
            raise CertificateError(f"invalid server host name {hostname!r}") from exc
    builder = PolicyBuilder().store(Store(list(trust_anchors)))
    if now is not None:
        builder = builder.time(now)
    try:
        builder.build_server_verifier(subject).verify(leaf, [])
    except VerificationError as exc:
        raise CertificateError(f"server certificate not trusted for {hostname}: {exc}") from exc
    return leaf
