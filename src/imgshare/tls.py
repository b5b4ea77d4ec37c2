"""The one TLS context factory (docs/design.md, C9): every socket in imgshare uses these
contexts.

Policy (docs/design.md, decision 2; Mozilla "modern"):

- TLS 1.3 only by default. ``min_version="1.2"`` also allows TLS 1.2, then only
  with ECDHE key exchange and AEAD ciphers (AES-GCM, ChaCha20-Poly1305).
- Key-exchange groups X25519, P-256 and P-384 only (see ``restrict_groups``).
- No compression (CRIME), no renegotiation, no session tickets: the server sets
  ``num_tickets = 0`` and ``OP_NO_TICKET`` because a long-lived process never
  rotates its ticket key, so one leaked key would decrypt every resumed session,
  and our connections are long-lived, so resumption buys next to nothing.
- Certificates are checked with ``VERIFY_X509_STRICT`` (Python 3.13's default).
- Mutual TLS: a server given ``client_ca`` requires a client certificate from that
  CA; OpenSSL then also demands the clientAuth EKU.

Loading errors become ``CertificateError`` (bad or missing certificate/key files)
or ``ConfigError`` (bad arguments). A missing key passphrase never falls back to
OpenSSL's terminal prompt, which would hang a server.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import Any, Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from imgshare.errors import CertificateError, ConfigError

logger = logging.getLogger(__name__)

TLSMinVersion: TypeAlias = Literal["1.2", "1.3"]
StrPath: TypeAlias = str | os.PathLike[str]
Password: TypeAlias = str | bytes | None

GROUPS = ("X25519", "P-256", "P-384")
# TLS 1.2 only: ECDHE for forward secrecy, AEAD only (Mozilla "intermediate" list).
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# OpenSSL's SSL_VERIFY_* flags as Python's ssl.VerifyMode (CERT_REQUIRED = PEER | FAIL_IF_NO_PEER).
_VERIFY_MODES = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 3: ssl.CERT_REQUIRED}
_SSL_CTRL_SET_GROUPS_LIST = 92  # from <openssl/ssl.h>; SSL_CTX_set1_groups_list is a macro


def create_server_context(
    certfile: StrPath,
    keyfile: StrPath,
    *,
    password: Password = None,
    client_ca: StrPath | None = None,
    min_version: TLSMinVersion = "1.3",
) -> ssl.SSLContext:
    """Make the server's TLS context from its certificate and key files.

    ``password`` decrypts an encrypted key. With ``client_ca`` every client must
    present a certificate issued by that CA (mutual TLS). Raises
    ``CertificateError`` for unusable files, ``ConfigError`` for bad arguments.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, min_version)
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    _load_chain(context, certfile, keyfile, password)
    if client_ca is not None:
        _load_trust(context, cafile=client_ca, cadata=None)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def create_client_context(
    cafile: StrPath | None = None,
    *,
    cadata: str | bytes | None = None,
    client_cert: StrPath | None = None,
    client_key: StrPath | None = None,
    password: Password = None,
    min_version: TLSMinVersion = "1.3",
) -> ssl.SSLContext:
    """Make a client's TLS context that checks the server's certificate and name.

    Trusts ``cafile`` and/or ``cadata`` (PEM text or DER bytes), normally our
    ``ca.pem``; with neither, the system's trust store. ``client_cert`` (and
    ``client_key`` if the key is in another file) is presented for mutual TLS.
    Raises ``CertificateError`` for unusable files, ``ConfigError`` for bad arguments.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    _harden(context, min_version)
    if cafile is None and cadata is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_trust(context, cafile=cafile, cadata=cadata)
    if client_cert is not None:
        _load_chain(context, client_cert, client_key, password)
    elif client_key is not None:
        raise ConfigError("a client key was given without its client certificate")
    return context


def _harden(context: ssl.SSLContext, min_version: str) -> None:
    """Apply the policy shared by both sides (see the module docstring)."""
    try:
        context.minimum_version = _VERSIONS[min_version]
    except KeyError:
        raise ConfigError(
            f"unsupported minimum TLS version {min_version!r}: use '1.3' or '1.2'"
        ) from None
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(TLS12_CIPHERS)  # TLS 1.3 suites are separate and all AEAD
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    restrict_groups(context)


def _load_chain(
    context: ssl.SSLContext, certfile: StrPath, keyfile: StrPath | None, password: Password
) -> None:
    key = keyfile if keyfile is not None else certfile

    def no_password() -> bytes:
        # Called only for an encrypted key; beats OpenSSL's blocking terminal prompt.
        raise CertificateError(f"private key {key} is encrypted: a password is needed")

    try:
        context.load_cert_chain(certfile, keyfile, password if password else no_password)
    except CertificateError:
        raise
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = _diagnose(certfile, key, password)
        raise CertificateError(
            f"cannot use certificate {certfile} with key {key}: {reason}"
        ) from exc


def _diagnose(certfile: StrPath, keyfile: StrPath, password: Password) -> str:
    """Say why OpenSSL refused a certificate and key: its own reason is "PEM lib"."""
    try:
        cert_data, key_data = Path(certfile).read_bytes(), Path(keyfile).read_bytes()
    except OSError as exc:
        return f"cannot read {exc.filename}: {exc.strerror}"
    encrypted = b"ENCRYPTED" in key_data
    secret = password.encode() if isinstance(password, str) else password
    try:
        key = serialization.load_pem_private_key(key_data, secret if encrypted else None)
        cert = x509.load_pem_x509_certificate(cert_data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "wrong password" if encrypted else "not a PEM certificate and private key"
    if cert.public_key() != key.public_key():
        return "the key does not belong to the certificate"
    return "OpenSSL refused them"


def _load_trust(
    context: ssl.SSLContext, *, cafile: StrPath | None, cadata: str | bytes | None
) -> None:
    try:
        context.load_verify_locations(cafile=cafile, cadata=cadata)
    except FileNotFoundError as exc:
        raise CertificateError(f"cannot read CA file {cafile}: no such file") from exc
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError too
        where = cafile if cafile is not None else "cadata"
        raise CertificateError(f"cannot load CA certificates from {where}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return str(getattr(exc, "strerror", None) or exc)


# --- key-exchange groups -------------------------------------------------------------------
#
# Python 3.11's ssl module can only choose the single ECDH curve for TLS 1.2
# (set_ecdh_curve); TLS 1.3 groups are out of its reach (a SSLContext.set_groups is
# expected in Python 3.15: used when present, untested here). So we call OpenSSL
# ourselves: the SSL_CTX* is the first field after PyObject_HEAD in CPython's
# PySSLContext (unchanged since Python 2.7; other C extensions rely on it too), and
# SSL_CTX_ctrl is looked up through the handle of the _ssl extension, so it is the
# very libssl that made the context. Before writing anything we check that we hold
# that SSL_CTX: the library version must match, and the options and verify mode read
# through ctypes must equal what Python reports. If any check fails we log a warning
# and keep OpenSSL's default groups (3.0: X25519, P-256, X448, P-521, P-384,
# ffdhe2048-8192), all still secure: only the policy is looser. The alternative, an
# OpenSSL config file, is process-wide, must be in place before OpenSSL initialises,
# and is silently shadowed when the environment already sets OPENSSL_CONF.


@functools.cache
def _libssl() -> Any | None:
    """The libssl functions of the running ``_ssl`` module, or None if unreachable."""
    if sys.implementation.name != "cpython" or os.name != "posix":
        return None
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        # uint64_t since OpenSSL 3.0, unsigned long in 1.1.1.
        modern = ssl.OPENSSL_VERSION_INFO >= (3,)
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64 if modern else ctypes.c_ulong
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
    except (OSError, AttributeError, ImportError):
        return None
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return None  # not the libssl that `ssl` uses: never touch its objects
    return lib


def _ssl_ctx_pointer(context: ssl.SSLContext, lib: Any) -> int | None:
    """Read the ``SSL_CTX *`` of ``context``, or None if it does not check out."""
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        return None
    if lib.SSL_CTX_get_options(pointer) != context.options:
        return None
    if _VERIFY_MODES.get(lib.SSL_CTX_get_verify_mode(pointer)) != context.verify_mode:
        return None
    return int(pointer)


def restrict_groups(context: ssl.SSLContext, groups: tuple[str, ...] = GROUPS) -> bool:
    """Limit ``context``'s key exchange to ``groups``; return whether it worked.

    Fails safe: when the mechanism is unavailable the context keeps OpenSSL's
    defaults and a warning is logged (see the comment above).
    """
    set_groups = getattr(context, "set_groups", None)  # Python 3.15+
    if set_groups is not None:
        try:
            set_groups(":".join(groups))
            return True
        except (TypeError, ValueError, ssl.SSLError):
            pass  # an API unlike the one we expect: try OpenSSL directly
    lib = _libssl()
    pointer = None if lib is None else _ssl_ctx_pointer(context, lib)
    if lib is None or pointer is None:
        logger.warning("cannot restrict TLS groups here; OpenSSL's default groups stay on")
        return False
    names = ":".join(groups).encode("ascii")
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, names) != 1:
        logger.warning("OpenSSL refused the TLS groups %s; its defaults stay on", names)
        return False
    return True


def client_certificate_name(sock: ssl.SSLSocket) -> str | None:
    """The common name of the client certificate the handshake verified, if any.

    Only a server whose context requires client certificates (``client_ca``) has one,
    and OpenSSL has then checked it chains to that CA and allows clientAuth; the name
    is what CERT_LOGIN logs in as."""
    peer = sock.getpeercert()
    if not peer:
        return None
    for rdn in peer.get("subject", ()):
        for attribute in rdn:
            if attribute[0] == "commonName":
                return str(attribute[1])
    return None
