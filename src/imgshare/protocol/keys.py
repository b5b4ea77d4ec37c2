"""The handshake's cryptography: ephemeral ECDH, the key schedule, signatures, Finished.

Key schedule (docs/protocol.md, "Key schedule"):

    shared  = ECDH(client ephemeral, server ephemeral)      # MUST NOT be all zero
    th      = SHA-256(ClientHello record || ServerHello record)
    secret  = HKDF-Extract(salt = th, ikm = shared)
    key(L)  = HKDF-Expand(secret, "imgshare v1 " || L, 32)  for each label L

Every key has its own label and each direction its own key, so no key is ever used
for two purposes. Randomness comes from an injected ``rng`` so vectors pin every byte.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from imgshare.errors import HandshakeError, IntegrityError, LocalProtocolError
from imgshare.protocol import codec
from imgshare.protocol.constants import (
    HANDSHAKE_SIGNATURE_CONTEXT,
    KEY_SIZE,
    LABEL_C2S_KEY,
    LABEL_CLIENT_FINISHED,
    LABEL_PREFIX,
    LABEL_S2C_KEY,
    LABEL_SERVER_FINISHED,
    LABEL_SESSION_ID,
    SIGNATURE_PAD,
    ErrorCode,
    Group,
    SignatureScheme,
)

Rng = Callable[[int], bytes]
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
#: Decides whether a server certificate (DER) is trusted; returns its public key or raises.
ServerVerifier = Callable[[bytes], VerifyingKey]

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _handshake_failed(message: str) -> HandshakeError:
    return HandshakeError(message, ErrorCode.HANDSHAKE_FAILED)


# --- ephemeral key exchange ---------------------------------------------------------


class EphemeralKey:
    """One side's ephemeral key for one handshake, drawn from the injected rng."""

    def __init__(self, group: Group, rng: Rng) -> None:
        self.group = group
        if group is Group.X25519:
            self._x = x25519.X25519PrivateKey.from_private_bytes(rng(32))
            self.public_bytes = self._x.public_key().public_bytes_raw()
        else:
            scalar = 0
            while not 1 <= scalar < _P256_ORDER:  # rejection sampling keeps it uniform
                scalar = int.from_bytes(rng(32), "big")
            self._ec = ec.derive_private_key(scalar, ec.SECP256R1())
            self.public_bytes = self._ec.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )

    def exchange(self, peer_share: bytes) -> bytes:
        """ECDH with the peer's share; raises ``HandshakeError`` for a bad or weak share."""
        try:
            if self.group is Group.X25519:
                if len(peer_share) != 32:
                    raise ValueError("X25519 share is 32 bytes")
                shared = self._x.exchange(x25519.X25519PublicKey.from_public_bytes(peer_share))
            else:
                if len(peer_share) != 65 or peer_share[0] != 0x04:
                    raise ValueError("P-256 share is an uncompressed point")
                peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_share)
                shared = self._ec.exchange(ec.ECDH(), peer)
        except ValueError as exc:  # invalid point, low-order point, wrong length
            raise _handshake_failed("invalid key share") from exc
        if hmac.compare_digest(shared, bytes(len(shared))):
            raise _handshake_failed("all-zero shared secret")
        return shared


# --- key schedule -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionKeys:
    client_to_server: bytes = field(repr=False)
    server_to_client: bytes = field(repr=False)
    client_finished: bytes = field(repr=False)
    server_finished: bytes = field(repr=False)
    session_id: bytes


def transcript_hash(*records: bytes) -> bytes:
    digest = hashlib.sha256()
    for record in records:
        digest.update(record)
    return digest.digest()


def derive_session_keys(shared: bytes, hello_hash: bytes) -> SessionKeys:
    secret = HKDF.extract(hashes.SHA256(), hello_hash, shared)

    def expand(label: bytes) -> bytes:
        return HKDFExpand(hashes.SHA256(), KEY_SIZE, LABEL_PREFIX + label).derive(secret)

    return SessionKeys(
        client_to_server=expand(LABEL_C2S_KEY),
        server_to_client=expand(LABEL_S2C_KEY),
        client_finished=expand(LABEL_CLIENT_FINISHED),
        server_finished=expand(LABEL_SERVER_FINISHED),
        session_id=expand(LABEL_SESSION_ID),
    )


def finished_mac(key: bytes, transcript: bytes) -> bytes:
    return hmac.new(key, transcript, hashlib.sha256).digest()


def check_finished(key: bytes, transcript: bytes, received: bytes) -> None:
    if not hmac.compare_digest(finished_mac(key, transcript), received):
        raise _handshake_failed("Finished does not verify")


# --- server signatures --------------------------------------------------------------


def handshake_signed_content(hello_hash: bytes) -> bytes:
    return SIGNATURE_PAD + HANDSHAKE_SIGNATURE_CONTEXT + b"\x00" + hello_hash


def scheme_for(key: SigningKey | VerifyingKey) -> SignatureScheme:
    """The one signature scheme each key type uses; raises ``ValueError`` for others."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return SignatureScheme.ECDSA_SECP256R1_SHA256
        raise ValueError("only P-256 EC keys are supported")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return SignatureScheme.RSA_PSS_RSAE_SHA256
    return SignatureScheme.ED25519


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def sign(key: SigningKey, content: bytes) -> tuple[SignatureScheme, bytes]:
    """Sign with the server key. ECDSA is deterministic (RFC 6979) so vectors pin it."""
    scheme = scheme_for(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return scheme, key.sign(content, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    if isinstance(key, rsa.RSAPrivateKey):
        return scheme, key.sign(content, _pss(), hashes.SHA256())
    return scheme, key.sign(content)


def verify(key: VerifyingKey, scheme: int, signature: bytes, content: bytes) -> bool:
    """True only if ``signature`` is valid for ``content`` under ``key`` and ``scheme``."""
    try:
        if scheme != scheme_for(key):
            return False
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, content, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, content, _pss(), hashes.SHA256())
        else:
            key.verify(signature, content)
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_of(certificate_der: bytes) -> VerifyingKey:
    """Public key of a DER certificate; raises ``HandshakeError`` if unusable."""
    try:
        key = x509.load_der_x509_certificate(certificate_der).public_key()
    except ValueError as exc:
        raise _handshake_failed("server certificate does not parse") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise _handshake_failed("server certificate key type not supported")
    return key


class PinnedCertificate:
    """Trusts exactly one certificate: a pinned one, or the TLS peer's own."""

    def __init__(self, certificate_der: bytes) -> None:
        self._der = certificate_der

    def __call__(self, certificate_der: bytes) -> VerifyingKey:
        if not hmac.compare_digest(certificate_der, self._der):
            raise _handshake_failed("server certificate is not the trusted one")
        return public_key_of(certificate_der)


# --- sealed records -----------------------------------------------------------------


class SessionCipher:
    """AES-256-GCM for one direction; the nonce is the record counter, never reused."""

    MAX_SEQUENCE = (1 << 64) - 1

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._sequence = 0

    def _nonce(self) -> bytes:
        if self._sequence >= self.MAX_SEQUENCE:
            raise LocalProtocolError("record counter exhausted; start a new session")
        nonce = bytes(4) + codec.u64(self._sequence)
        self._sequence += 1
        return nonce

    def seal(self, plaintext: bytes, header: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(), plaintext, header)

    def open(self, ciphertext: bytes, header: bytes) -> bytes:
        """Raises ``IntegrityError`` (opaque) for a replayed, reordered or altered record."""
        try:
            return self._aead.decrypt(self._nonce(), ciphertext, header)
        except InvalidTag as exc:
            raise IntegrityError(
                "sealed record does not verify", ErrorCode.INTEGRITY_FAILED
            ) from exc
