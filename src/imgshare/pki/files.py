"""Certificate files: writing and loading PEM, and whole certificate folders.

Private keys are mode 0600 from the first instant (``O_EXCL`` with the mode given to
``open``: no umask can widen it); files are never overwritten unless ``force`` is
set, and then they are replaced atomically. This module logs and raises, never prints.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imgshare.errors import CertificateError, ConfigError
from imgshare.pki.issue import (
    DEFAULT_CA_DAYS,
    DEFAULT_CLIENT_DAYS,
    DEFAULT_HOSTS,
    DEFAULT_SERVER_DAYS,
    IssuedCertificate,
    KeyType,
    PrivateKey,
    _check_days,
    check_client_name,
    generate_ca,
    issue_client_certificate,
    issue_server_certificate,
    parse_host,
)
from imgshare.pki.verify import _san_text, describe_certificate

logger = logging.getLogger(__name__)

KEY_MODE = 0o600
CERT_MODE = 0o644

# PKCS#8 and the traditional OpenSSL form of an encrypted PEM key.
_ENCRYPTED_MARKERS = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


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


# --- files -------------------------------------------------------------------------------


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
