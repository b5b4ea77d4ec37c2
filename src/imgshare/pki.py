"""The certificate generator: a private CA, server and client certificates (PEM).

Why our own CA: a self-hosted server has no public name that a public CA would
vouch for, and a self-signed leaf cannot issue client certificates for mutual TLS.
One small CA per installation gives clients one file to trust (``ca.pem``) and the
server one anchor for client certificates. The profile (ECDSA P-256 or RSA-3072,
SHA-256, pathlen 0, EKU per role, SKI + AKI because ``cryptography``'s verifier and
OpenSSL's ``X509_STRICT`` demand them) is spelled out in each ``issue_*`` function.

Private keys are mode 0600 from the first instant (``O_EXCL`` with the mode given to
``open``: no umask can widen it); files are never overwritten unless ``force`` is
set, and then they are replaced atomically. This module logs and raises, never prints.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, Subject, VerificationError

from imgshare.errors import CertificateError, ConfigError

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
KEY_MODE = 0o600
CERT_MODE = 0o644

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
# PKCS#8 and the traditional OpenSSL form of an encrypted PEM key.
_ENCRYPTED_MARKERS = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")
_RESERVED_NAMES = frozenset({"ca", "server"})  # `certs client ca` must not clobber the CA
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate together with its private key, as made in memory."""

    certificate: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True)
class KeyPairPaths:
    """Where one certificate and its private key live."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificatePaths:
    """The fixed file names of a certificate folder (``ca.*``, ``server.*``)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


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
    """Check that a client name is a safe simple name, never a path; return it.

    The name becomes the subject CN and the file names ``NAME.pem``/``NAME.key``,
    so it must not contain a separator, start with a dot, or be ``ca``/``server``.
    Raises ``ConfigError``.
    """
    if not _CLIENT_NAME.fullmatch(name) or name.lower() in _RESERVED_NAMES:
        raise ConfigError(
            f"invalid client name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "not starting with '.', and not 'ca' or 'server'"
        )
    return name


def read_passphrase_file(path: str | os.PathLike[str]) -> bytes:
    """Read a passphrase from the first line of a file (trailing newline stripped).

    A file keeps the passphrase out of the process list and shell history.
    Raises ``ConfigError`` if the file cannot be read or the line is empty.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not line:
        raise ConfigError(f"passphrase file {path} is empty")
    return line


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


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


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


# --- files -------------------------------------------------------------------------------


def _exists_error(path: Path) -> CertificateError:
    return CertificateError(f"{path} already exists; use --force to replace it")


def _write_fd(fd: int, data: bytes, mode: int) -> None:
    try:
        os.fchmod(fd, mode)  # exact mode: umask may only have narrowed it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    """Write ``data`` with ``mode`` from the first instant; replace only with ``force``.

    Without ``force`` the file is created with ``O_EXCL`` (never clobbers, not even
    through a symlink). With ``force`` it goes to a temporary file in the same
    folder and is renamed over the old one, so readers see old or new, never half.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    target = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp") if force else path
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError as exc:
        raise _exists_error(path) from exc
    except OSError as exc:
        raise CertificateError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        _write_fd(fd, data, mode)
        if force:
            os.replace(target, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise CertificateError(f"cannot write {path}: {exc.strerror}") from exc


def _write_files(items: Iterable[tuple[Path, bytes, int]], *, force: bool) -> None:
    """Write several files; without ``force``, undo our own writes if one fails."""
    items = list(items)
    if not force:
        for path, _, _ in items:
            if path.exists() or path.is_symlink():
                raise _exists_error(path)
    written: list[Path] = []
    try:
        for path, data, mode in items:
            _write_file(path, data, mode, force=force)
            written.append(path)
    except CertificateError:
        if not force:
            for path in written:
                path.unlink(missing_ok=True)
        raise


def _key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    if passphrase is not None and not passphrase:
        raise ConfigError("an empty passphrase would not protect the key")
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _pair_items(
    paths: KeyPairPaths, issued: IssuedCertificate, passphrase: bytes | None
) -> list[tuple[Path, bytes, int]]:
    cert_pem = issued.certificate.public_bytes(serialization.Encoding.PEM)
    return [
        (paths.key, _key_pem(issued.key, passphrase), KEY_MODE),
        (paths.cert, cert_pem, CERT_MODE),
    ]


def _prepare_directory(directory: Path) -> None:
    try:
        # 0700 for a new folder: it holds private keys.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create folder {directory}: {exc.strerror}") from exc
    if not directory.is_dir():
        raise CertificateError(f"{directory} is not a folder")


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror}") from exc


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load the first certificate of a PEM file. Raises ``CertificateError``."""
    path = Path(path)
    try:
        return x509.load_pem_x509_certificate(_read_file(path))
    except ValueError as exc:
        raise CertificateError(f"{path} does not hold a PEM certificate") from exc


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> PrivateKey:
    """Load an EC or RSA private key from PEM, decrypting it with ``passphrase``.

    A passphrase given for an unencrypted key is ignored. Raises
    ``CertificateError`` if the key is encrypted and no passphrase or a wrong one
    was given (the message never contains the passphrase), or the file is no key.
    """
    path = Path(path)
    data = _read_file(path)
    encrypted = any(marker in data for marker in _ENCRYPTED_MARKERS)
    if encrypted and not passphrase:
        raise CertificateError(f"{path} is encrypted: its passphrase is needed")
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise CertificateError(f"wrong passphrase for {path}") from exc
        raise CertificateError(f"{path} does not hold a PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"{path}: only EC and RSA keys are supported")
    return key


def load_ca(
    directory: str | os.PathLike[str], passphrase: bytes | None = None
) -> IssuedCertificate:
    """Load ``ca.pem`` and ``ca.key`` from a folder and check that they belong together.

    Raises ``CertificateError`` (missing files, wrong passphrase, key mismatch).
    """
    paths = CertificatePaths(Path(directory))
    certificate = load_certificate(paths.ca_cert)
    key = load_private_key(paths.ca_key, passphrase)
    if key.public_key() != certificate.public_key():
        raise CertificateError(f"{paths.ca_key} is not the key of {paths.ca_cert}")
    return IssuedCertificate(certificate, key)


# --- whole folders -----------------------------------------------------------------------


def init_certificates(
    directory: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    key_type: KeyType = "ec",
    days: int = DEFAULT_SERVER_DAYS,
    ca_days: int = DEFAULT_CA_DAYS,
    force: bool = False,
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> CertificatePaths:
    """Write a new CA (``ca.pem``, ``ca.key``) and server certificate into a folder.

    ``passphrase`` encrypts both private keys (then the server needs it to start).
    Without ``force`` nothing is written if any of the four files exists. Raises
    ``ConfigError`` for bad arguments, ``CertificateError`` for file problems.
    """
    paths = CertificatePaths(Path(directory))
    for host in hosts:
        parse_host(host)  # all arguments are checked before anything is made
    _check_days(days, "server certificate")
    _check_days(ca_days, "CA certificate")
    _prepare_directory(paths.directory)
    ca = generate_ca(key_type=key_type, days=ca_days, now=now)
    server = issue_server_certificate(ca, hosts, key_type=key_type, days=days, now=now)
    items = _pair_items(KeyPairPaths(paths.ca_cert, paths.ca_key), ca, passphrase)
    items += _pair_items(KeyPairPaths(paths.server_cert, paths.server_key), server, passphrase)
    _write_files(items, force=force)
    logger.info("wrote a new CA and server certificate in %s", paths.directory)
    return paths


def create_server_certificate(
    directory: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    key_type: KeyType = "ec",
    days: int = DEFAULT_SERVER_DAYS,
    force: bool = False,
    passphrase: bytes | None = None,
    ca_passphrase: bytes | None = None,
    now: datetime | None = None,
) -> CertificatePaths:
    """Issue ``server.pem``/``server.key`` from the CA already in the folder.

    This renews or re-hosts the server without replacing the CA that clients
    trust. Raises ``ConfigError`` or ``CertificateError``.
    """
    paths = CertificatePaths(Path(directory))
    ca = load_ca(paths.directory, ca_passphrase)
    server = issue_server_certificate(ca, hosts, key_type=key_type, days=days, now=now)
    pair = KeyPairPaths(paths.server_cert, paths.server_key)
    _write_files(_pair_items(pair, server, passphrase), force=force)
    return paths


def create_client_certificate(
    directory: str | os.PathLike[str],
    name: str,
    *,
    key_type: KeyType = "ec",
    days: int = DEFAULT_CLIENT_DAYS,
    force: bool = False,
    passphrase: bytes | None = None,
    ca_passphrase: bytes | None = None,
    now: datetime | None = None,
) -> KeyPairPaths:
    """Issue ``NAME.pem``/``NAME.key`` for mutual TLS from the CA in the folder.

    Raises ``ConfigError`` for a bad name or validity, ``CertificateError`` for a
    missing or locked CA key and for file problems.
    """
    directory = Path(directory)
    check_client_name(name)
    ca = load_ca(directory, ca_passphrase)
    issued = issue_client_certificate(ca, name, key_type=key_type, days=days, now=now)
    pair = KeyPairPaths(directory / f"{name}.pem", directory / f"{name}.key")
    _write_files(_pair_items(pair, issued, passphrase), force=force)
    return pair


def ensure_server_certificates(
    directory: str | os.PathLike[str], hosts: Sequence[str] = DEFAULT_HOSTS
) -> CertificatePaths:
    """Make the certificates a server needs on its first start; reuse them later.

    An empty folder gets a new CA and server certificate. A folder with the CA but
    no server files gets a new server certificate (delete ``server.*`` to renew).
    A folder with ``ca.pem``, ``server.pem`` and ``server.key`` is used as it is
    (``ca.key`` may be kept elsewhere). Anything else raises ``CertificateError``.
    """
    paths = CertificatePaths(Path(directory))
    needed = (paths.ca_cert, paths.server_cert, paths.server_key)
    present = {path for path in (*needed, paths.ca_key) if path.exists()}
    if all(path in present for path in needed):
        _warn_if_unfit(load_certificate(paths.server_cert), hosts)
        return paths
    if not present:
        logger.info("no certificates in %s: creating a CA and a server certificate", directory)
        return init_certificates(paths.directory, hosts=hosts)
    if present == {paths.ca_cert, paths.ca_key}:
        logger.info("issuing a new server certificate from the CA in %s", directory)
        return create_server_certificate(paths.directory, hosts=hosts)
    missing = ", ".join(path.name for path in needed if path not in present)
    raise CertificateError(
        f"incomplete certificate folder {directory}: {missing} missing "
        "(run 'imgshare certs init --force' to start over)"
    )


def _warn_if_unfit(cert: x509.Certificate, hosts: Sequence[str]) -> None:
    info = describe_certificate(cert)
    if info.expired:
        logger.warning("the server certificate expired on %s", info.not_after)
    wanted = {_san_text(parse_host(host)) for host in hosts}
    if missing := sorted(wanted - set(info.sans)):
        logger.warning("the server certificate does not name %s", ", ".join(missing))


# --- looking at certificates -------------------------------------------------------------


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
