"""Building certificates in memory: keys, the private CA, server and client certificates.

Why our own CA: a self-hosted server has no public name that a public CA would
vouch for, and a self-signed leaf cannot issue client certificates for mutual TLS.
One small CA per installation gives clients one file to trust (``ca.pem``) and the
server one anchor for client certificates. The profile (ECDSA P-256 or RSA-3072,
SHA-256, pathlen 0, EKU per role, SKI + AKI because ``cryptography``'s verifier and
OpenSSL's ``X509_STRICT`` demand them) is spelled out in each ``issue_*`` function.

Nothing here touches the file system (``imgshare.pki.files`` does). This module
logs and raises, never prints.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imgshare.errors import CertificateError, ConfigError
from imgshare.pki.verify import _extension
from imgshare.protocol.constants import USERNAME_PATTERN

logger = logging.getLogger(__name__)

KeyType: TypeAlias = Literal["ec", "rsa"]
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
DEFAULT_CA_DAYS = 3650
DEFAULT_SERVER_DAYS = 90
DEFAULT_CLIENT_DAYS = 365
MAX_DAYS = 36500  # beyond ~100 years dates stop meaning anything
CLOCK_SKEW = timedelta(minutes=5)
RSA_KEY_SIZE = 3072

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# A client certificate names the user CERT_LOGIN logs in as: a user name.
_CLIENT_NAME = re.compile(USERNAME_PATTERN)
_RESERVED_NAMES = frozenset({"ca", "server"})  # `certs client ca` must not clobber the CA


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate together with its private key, as made in memory."""

    certificate: x509.Certificate
    key: PrivateKey


# --- validating what the user typed ---------------------------------------------------


def parse_host(host: str) -> x509.GeneralName:
    """Turn a host given by the user into the SAN entry that names it.

    IP addresses become ``IPAddress`` SANs (clients compare them as addresses, not
    text); everything else must be a plain LDH DNS name. Wildcards and IDNA are
    rejected to keep the rules simple. Raises ``ConfigError`` naming the host.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ConfigError(f"invalid host {host!r}: scoped IPv6 addresses cannot be in a SAN")
        return x509.IPAddress(address)
    name = host.lower()
    labels = name.split(".")
    if (
        len(name) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # "1.2.3" or "256.1.1.1": a mistyped IP, not a name
    ):
        raise ConfigError(
            f"invalid host {host!r}: expected an IP address or a DNS name "
            "(dot-separated labels of 1-63 letters, digits or inner hyphens)"
        )
    return x509.DNSName(name)


def check_client_name(name: str) -> str:
    """Check that a client name is a user name, never a path; return it.

    The name becomes the subject CN, which CERT_LOGIN logs in as, and the file names
    ``NAME.pem``/``NAME.key``, so it must be a user name (no separator, no leading
    dot) and not ``ca``/``server``. Raises ``ConfigError``.
    """
    if not _CLIENT_NAME.fullmatch(name) or name in _RESERVED_NAMES:
        raise ConfigError(
            f"invalid client name {name!r}: a client certificate names the user it logs "
            "in as, so use a user name (1 to 32 lowercase letters, digits, '_', '.' and "
            "'-', starting with a letter or digit), and not 'ca' or 'server'"
        )
    return name


def _check_days(days: int, what: str) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"{what} validity must be 1 to {MAX_DAYS} days, got {days}")


def _check_key_type(key_type: str) -> None:
    if key_type not in ("ec", "rsa"):
        raise ConfigError(f"unknown key type {key_type!r}: use 'ec' or 'rsa'")


# --- making keys and certificates in memory ---------------------------------------------


def generate_private_key(key_type: KeyType = "ec") -> PrivateKey:
    """Make a fresh key: ECDSA P-256 (small, fast, Mozilla "modern") or RSA-3072."""
    _check_key_type(key_type)
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(
    *, signature: bool = False, encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=False,
        key_encipherment=encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca: IssuedCertificate) -> x509.AuthorityKeyIdentifier:
    # Copy the CA's own SKI so the link also holds for a CA made by another tool.
    ski = _extension(ca.certificate, x509.SubjectKeyIdentifier)
    if ski is None:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _validity(
    days: int, now: datetime | None, ca: IssuedCertificate | None
) -> tuple[datetime, datetime]:
    start = now if now is not None else datetime.now(UTC)
    not_after = start + timedelta(days=days)
    if ca is not None:
        ca_end = ca.certificate.not_valid_after_utc
        if ca_end <= start:
            raise CertificateError(f"the CA certificate expired on {ca_end:%Y-%m-%d}")
        if not_after > ca_end:
            # A leaf that outlives its CA would fail verification at the CA's end anyway.
            logger.warning("certificate validity shortened to the CA's end, %s", ca_end)
            not_after = ca_end
    return start - CLOCK_SKEW, not_after


def _sign(
    subject: x509.Name,
    key: PrivateKey,
    ca: IssuedCertificate | None,
    *,
    days: int,
    now: datetime | None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> IssuedCertificate:
    """Sign ``key``'s certificate with ``ca`` (or itself when ``ca`` is None)."""
    not_before, not_after = _validity(days, now, ca)
    public_key = key.public_key()
    if ca is None:
        issuer, signer = subject, key
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    else:
        issuer, signer, aki = ca.certificate.subject, ca.key, _authority_key_id(ca)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return IssuedCertificate(builder.sign(signer, hashes.SHA256()), key)


def generate_ca(
    *,
    key_type: KeyType = "ec",
    days: int = DEFAULT_CA_DAYS,
    common_name: str | None = None,
    now: datetime | None = None,
) -> IssuedCertificate:
    """Make a self-signed CA that may sign leaf certificates only (pathlen 0).

    The default CN carries a random tag so that two installations' CAs are told
    apart by name. Raises ``ConfigError`` for bad arguments.
    """
    _check_days(days, "CA certificate")
    cn = common_name or f"imgshare private CA {secrets.token_hex(4)}"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imgshare"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (_key_usage(cert_sign=True), True),
    ]
    return _sign(
        subject, generate_private_key(key_type), None, days=days, now=now, extensions=extensions
    )


def issue_server_certificate(
    ca: IssuedCertificate,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    key_type: KeyType = "ec",
    days: int = DEFAULT_SERVER_DAYS,
    now: datetime | None = None,
) -> IssuedCertificate:
    """Issue a TLS server certificate for ``hosts`` (one SAN each), signed by ``ca``.

    Clients check names against the SANs only; the CN (first host) is for people.
    Raises ``ConfigError`` for a bad host or validity, ``CertificateError`` if the
    CA has expired.
    """
    _check_days(days, "server certificate")
    names = list(dict.fromkeys(parse_host(host) for host in hosts))
    if not names:
        raise ConfigError("a server certificate needs at least one host")
    first = str(names[0].value)
    # The CN is limited to 64 characters; long names live in the SAN only.
    cn = first if len(first) <= 64 else "imgshare server"
    key = generate_private_key(key_type)
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(signature=True, encipherment=key_type == "rsa"), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName(names), False),
    ]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return _sign(subject, key, ca, days=days, now=now, extensions=extensions)


def issue_client_certificate(
    ca: IssuedCertificate,
    name: str,
    *,
    key_type: KeyType = "ec",
    days: int = DEFAULT_CLIENT_DAYS,
    now: datetime | None = None,
) -> IssuedCertificate:
    """Issue a client certificate (EKU clientAuth, CN = ``name``) for mutual TLS.

    Raises ``ConfigError`` for a bad name or validity, ``CertificateError`` if the
    CA has expired.
    """
    check_client_name(name)
    _check_days(days, "client certificate")
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    key = generate_private_key(key_type)
    return _sign(subject, key, ca, days=days, now=now, extensions=extensions)
