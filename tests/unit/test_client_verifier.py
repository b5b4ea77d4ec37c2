"""ca_verifier remembers a certificate that passed, by its exact DER, until it expires.

The memory must change nothing but speed: whatever a fresh check refuses (another
CA, another host, an expired leaf or CA, one flipped byte) stays refused, every time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imgshare import pki
from imgshare.client import ca_verifier
from imgshare.errors import HandshakeError
from imgshare.protocol.keys import ServerVerifier, VerifyingKey

HOST = "localhost"


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def key_bytes(key: VerifyingKey | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def whole_second_after(seconds: float) -> datetime:
    """The first whole second at least ``seconds`` from now: X.509 times have no
    fractions, so a validity end with one would be rounded."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=0) + timedelta(seconds=1)


def wait_past(moment: datetime) -> None:
    """Sleep until ``moment`` is over for the certificate verifier as well.

    cryptography checks validity at whole seconds (it drops the fraction of "now"),
    so a certificate whose notAfter is 12:00:00 still passes at 12:00:00.9.
    """
    delay = (moment - datetime.now(UTC)).total_seconds() + 1.05
    if delay > 0:
        time.sleep(delay)


def make_ca(not_after: datetime | None = None) -> pki.IssuedCertificate:
    """A CA like ``pki.generate_ca``'s, but with any end of validity."""
    if not_after is None:
        return pki.generate_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "short-lived test CA")])
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return pki.IssuedCertificate(certificate, key)


def make_leaf(
    ca: pki.IssuedCertificate,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    host: str = HOST,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """A server certificate with ``pki.issue_server_certificate``'s profile, but any
    key (to issue two certificates for one key) and any end of validity (even past
    the CA's)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    ca_key_id = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(minutes=5))
        .not_valid_after(not_after or datetime.now(UTC) + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id.value),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def refused_every_time(verify: ServerVerifier, certificate_der: bytes) -> None:
    for _ in range(3):
        with pytest.raises(HandshakeError):
            verify(certificate_der)


@pytest.fixture(scope="module")
def ca() -> pki.IssuedCertificate:
    return pki.generate_ca()


@pytest.fixture
def verify(ca: pki.IssuedCertificate) -> ServerVerifier:
    return ca_verifier([ca.certificate], HOST)


def test_valid_certificate_verifies_again_with_the_same_key(
    pki_paths: pki.CertificatePaths,
) -> None:
    """The generator's own files, as the CLI and integration tests use them."""
    server = pki.load_certificate(pki_paths.server_cert)
    verify = ca_verifier([pki.load_certificate(pki_paths.ca_cert)], HOST)
    first = verify(der(server))
    second = verify(der(server))
    assert key_bytes(first) == key_bytes(second) == key_bytes(server.public_key())


def test_certificate_of_another_ca_is_refused_every_time(verify: ServerVerifier) -> None:
    stranger = pki.issue_server_certificate(pki.generate_ca(), [HOST]).certificate
    refused_every_time(verify, der(stranger))


def test_wrong_hostname_is_refused_every_time(ca: pki.IssuedCertificate) -> None:
    certificate = der(make_leaf(ca))
    verify_other_host = ca_verifier([ca.certificate], "img.example")
    refused_every_time(verify_other_host, certificate)
    ca_verifier([ca.certificate], HOST)(certificate)  # the certificate itself is fine


def test_a_refusal_is_not_remembered_and_blocks_nothing(
    ca: pki.IssuedCertificate, verify: ServerVerifier
) -> None:
    good = make_leaf(ca)
    refused_every_time(verify, der(make_leaf(ca, host="img.example")))
    assert key_bytes(verify(der(good))) == key_bytes(good.public_key())
    refused_every_time(verify, der(make_leaf(ca, host="img.example")))


def test_memory_ends_when_the_leaf_or_a_ca_expires() -> None:
    """One wait for both: a short-lived leaf under a long-lived CA, and a long-lived
    leaf under a short-lived CA (issued past its CA's end, so only the CA expires)."""
    end = whole_second_after(0.3)
    long_ca = make_ca()
    short_ca = make_ca(not_after=end)
    short_leaf = der(make_leaf(long_ca, not_after=end))
    long_leaf = der(make_leaf(short_ca, not_after=end + timedelta(days=1)))
    verify_short_leaf = ca_verifier([long_ca.certificate], HOST)
    verify_short_ca = ca_verifier([long_ca.certificate, short_ca.certificate], HOST)
    verify_short_leaf(short_leaf)
    verify_short_ca(long_leaf)
    verify_short_ca(der(make_leaf(long_ca)))  # unrelated to the short-lived CA
    wait_past(end)
    refused_every_time(verify_short_leaf, short_leaf)
    refused_every_time(verify_short_ca, long_leaf)


def test_a_flipped_signature_byte_is_refused_after_the_genuine_certificate_passed(
    ca: pki.IssuedCertificate, verify: ServerVerifier
) -> None:
    genuine = der(make_leaf(ca))
    verify(genuine)
    tampered = bytearray(genuine)
    tampered[-1] ^= 0x01  # the last byte of the ECDSA signature's s
    refused_every_time(verify, bytes(tampered))
    verify(genuine)


def test_another_certificate_for_a_remembered_key_is_checked_on_its_own(
    ca: pki.IssuedCertificate, verify: ServerVerifier
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    genuine = make_leaf(ca, key=key)
    expected = key_bytes(key.public_key())
    assert key_bytes(verify(der(genuine))) == expected
    reissued = make_leaf(ca, key=key)  # new serial, same key, same CA: fine
    assert key_bytes(verify(der(reissued))) == expected
    refused_every_time(verify, der(make_leaf(ca, key=key, host="img.example")))
    refused_every_time(verify, der(make_leaf(pki.generate_ca(), key=key)))


def test_many_certificates_all_verify(ca: pki.IssuedCertificate, verify: ServerVerifier) -> None:
    """More certificates than the memory keeps: the rest are simply checked each time."""
    leaves = [make_leaf(ca) for _ in range(20)]
    for _ in range(2):
        for leaf in leaves:
            assert key_bytes(verify(der(leaf))) == key_bytes(leaf.public_key())
