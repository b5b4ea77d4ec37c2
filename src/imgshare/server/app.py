"""Assemble a server from its settings: data folder, certificates, keys, catalog, sweep.

First start on an empty data folder creates the certificates (``imgshare.pki``), the
storage key (mode 0600) and the catalog, and logs where they are.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization

from imgshare import pki, tls
from imgshare.errors import ConfigError, StorageError
from imgshare.logs import fields
from imgshare.protocol import Limits
from imgshare.protocol.keys import SigningKey, scheme_for
from imgshare.server import images
from imgshare.server.accounts import DEFAULT_MAX_CONCURRENT_HASHES, Accounts
from imgshare.server.config import ServerSettings
from imgshare.server.logins import HashGate, LoginThrottle, ThrottlePolicy
from imgshare.server.network import NetworkSettings, Server
from imgshare.server.service import Service
from imgshare.server.uploads import MIB, MIN_UPLOAD_MEMORY, UploadSlots
from imgshare.store import (
    FileBlobStore,
    Inbox,
    SQLiteCatalog,
    StorageKey,
    load_or_create_storage_key,
    storage_key_from_env,
    sweep,
)
from imgshare.store.lock import DataFolderLock, check_writable

log = logging.getLogger(__name__)

STORAGE_KEY_ENV = "IMGSHARE_STORAGE_KEY"


@dataclass(frozen=True)
class DataPaths:
    root: Path

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite3"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def scratch(self) -> Path:
        return self.root / "tmp"


def open_catalog(data: Path) -> SQLiteCatalog:
    """The catalog of a data folder (created if missing); used by `imgshare user` too."""
    _make_data_dir(data)
    return SQLiteCatalog(DataPaths(data).catalog)


def _make_data_dir(data: Path) -> None:
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create data folder {data}: {exc.strerror}") from exc


def _storage_key(settings: ServerSettings) -> StorageKey:
    from_env = os.environ.get(STORAGE_KEY_ENV)
    if from_env:
        log.info("storage key from the environment", extra=fields(variable=STORAGE_KEY_ENV))
        return storage_key_from_env(from_env)
    path = settings.storage_key_path
    created = not path.exists()
    key = load_or_create_storage_key(path)
    log.info("storage key %s", "created" if created else "loaded", extra=fields(path=str(path)))
    return key


def _signing_identity(settings: ServerSettings) -> tuple[bytes, SigningKey, bytes | None]:
    passphrase = (
        pki.read_passphrase_file(settings.key_passphrase_file)
        if settings.key_passphrase_file
        else None
    )
    cert = pki.load_certificate(settings.cert_path)
    key = pki.load_private_key(settings.key_path, passphrase)
    try:
        scheme_for(key)
    except ValueError as exc:
        raise ConfigError(f"{settings.key_path}: {exc}") from exc
    return cert.public_bytes(serialization.Encoding.DER), key, passphrase


def _certificates(settings: ServerSettings) -> None:
    if settings.cert is None and settings.key is None:
        hosts = list(pki.DEFAULT_HOSTS) + list(settings.extra_hosts)
        paths = pki.ensure_server_certificates(settings.cert_dir, hosts)
        log.info(
            "certificates ready",
            extra=fields(ca=str(paths.ca_cert), cert=str(paths.server_cert)),
        )
    elif settings.cert is None or settings.key is None:
        raise ConfigError("give both --cert and --key, or neither")


def build_service(
    settings: ServerSettings,
    password_hasher: PasswordHasher | None = None,
    *,
    lock: DataFolderLock | None = None,
) -> Service:
    """Lock the data folder (unless ``lock`` is given), open (or create) its stores,
    check that they are writable, and sweep what a crash left.

    Raises ``DataFolderInUse`` if another server holds the folder, ``StorageError``
    if it cannot be written, ``ConfigError``.
    """
    _make_data_dir(settings.data)
    held = lock or DataFolderLock.acquire(settings.data)
    try:
        return _open_service(settings, password_hasher, held)
    except BaseException:
        if lock is None:
            held.release()
        raise


def _open_service(
    settings: ServerSettings, password_hasher: PasswordHasher | None, lock: DataFolderLock
) -> Service:
    images.load_plugins()  # now, not under the import lock of 200 first uploads
    paths = DataPaths(settings.data)
    blobs = FileBlobStore(paths.root)  # DATA/objects/, temp files in DATA/tmp/
    every_inbox = Inbox(paths.inbox)  # swept even when copies are turned off
    inbox = every_inbox if settings.inbox else None
    check_writable(paths.root, blobs.tmp_dir, blobs.objects_dir, every_inbox.tmp_dir)
    catalog = open_catalog(settings.data)
    try:
        report = sweep(blobs, every_inbox, catalog)
        if not report.clean:
            log.warning("start-up sweep removed leftovers of a crash", extra=fields(report=report))
        policy = ThrottlePolicy(
            free_per_account=settings.login_failures_per_account,
            free_per_address=settings.login_failures_per_address,
            base_delay=settings.login_delay,
            max_delay=settings.login_delay_max,
        )
        accounts = Accounts(
            catalog,
            hasher=password_hasher,
            gate=HashGate(DEFAULT_MAX_CONCURRENT_HASHES),
            throttle=LoginThrottle(catalog, policy),
        )
        return Service(
            catalog=catalog,
            blobs=blobs,
            inbox=inbox,
            storage_key=_storage_key(settings),
            accounts=accounts,
            image_policy=images.ImagePolicy(
                max_pixels=settings.max_pixels,
                decode_memory=images.DecodeMemory(settings.decode_memory),
            ),
            uploads=UploadSlots(
                catalog,
                quota_bytes=settings.quota_bytes,
                per_user=settings.max_uploads_per_user,
                memory=settings.upload_memory,
            ),
            max_login_failures=settings.max_login_failures,
            lock=lock,
        )
    except BaseException:
        catalog.close()
        raise


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


def open_files_needed(settings: ServerSettings) -> int:
    """Descriptors the server may need at once: one per connection, three per upload
    in flight (sealed and plaintext temp files, the image check), and a margin for
    the catalog, the listener, certificates and logs."""
    uploads = settings.upload_memory // MIN_UPLOAD_MEMORY
    return settings.max_connections + 3 * uploads + 64


#: Resident memory of a server at rest (Python, OpenSSL, Pillow, SQLite), rounded up
#: (measured: 45 MiB).
BASE_MEMORY = 128 * MIB
#: Resident memory one open connection may hold: its thread's stack pages, its TLS
#: buffers and its small read buffer (measured: 73 KiB for an idle logged-in one).
CONNECTION_MEMORY = 256 * 1024


def memory_bound(settings: ServerSettings) -> int:
    """The most resident memory the server needs with these settings (docs/security.md).

    At rest, plus every connection ``max_connections`` allows, plus the buffers of
    all uploads in flight (``upload_memory``), plus the decodes of image checks
    (``decode_memory``, or one decode of ``max_pixels`` if that is larger).
    """
    decodes = max(settings.decode_memory, images.largest_decode(settings.max_pixels))
    connections = settings.max_connections * CONNECTION_MEMORY
    return BASE_MEMORY + connections + settings.upload_memory + decodes


def _raise_open_file_limit(settings: ServerSettings) -> None:
    """Lift the soft open-file limit as far as the hard one allows; refuse to start if
    ``max_connections`` still cannot fit (a cap that fails at accept time would only
    look like one). Raises ``ConfigError``."""
    wanted = open_files_needed(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise ConfigError(
            f"max_connections {settings.max_connections} and upload_memory "
            f"{settings.upload_memory} need {wanted} open files, but this process may open "
            f"at most {hard} (the hard limit): raise it (ulimit -Hn, or LimitNOFILE= in a "
            "systemd unit) or lower max_connections"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    log.info("open-file limit raised", extra=fields(soft=wanted, hard=hard))


def build_server(
    settings: ServerSettings,
    password_hasher: PasswordHasher | None = None,
    *,
    stop: threading.Event | None = None,
) -> Server:
    """A ready-to-serve ``Server`` (listening already, so ``address`` is known).

    ``password_hasher`` replaces the argon2id defaults (tests use cheap parameters).
    ``stop``, if given, becomes the server's stop flag: setting it (from a signal
    handler, even before this returns) makes ``serve_forever`` return.
    """
    _make_data_dir(settings.data)
    _raise_open_file_limit(settings)
    lock = DataFolderLock.acquire(settings.data)  # before anything else touches the folder
    try:
        return _build_server(settings, password_hasher, stop, lock)
    except BaseException:
        lock.release()
        raise


def _build_server(
    settings: ServerSettings,
    password_hasher: PasswordHasher | None,
    stop: threading.Event | None,
    lock: DataFolderLock,
) -> Server:
    _certificates(settings)
    certificate_der, signing_key, passphrase = _signing_identity(settings)
    context = tls.create_server_context(
        settings.cert_path,
        settings.key_path,
        password=passphrase,
        client_ca=settings.client_ca,
        min_version="1.2" if settings.tls_min == "1.2" else "1.3",
    )
    service = build_service(settings, password_hasher, lock=lock)
    net = NetworkSettings(
        max_connections=settings.max_connections,
        max_connections_per_address=settings.max_connections_per_address,
        max_unauthenticated=settings.unauthenticated_cap,
        trusted_networks=settings.trusted_networks,
        tls_handshake_timeout=settings.tls_handshake_timeout,
        app_handshake_timeout=settings.app_handshake_timeout,
        login_timeout=settings.login_timeout,
        idle_timeout=settings.idle_timeout,
        min_transfer_bytes=settings.min_transfer_bytes,
        transfer_window=settings.transfer_window,
    )
    limits = Limits(max_image_size=settings.max_image_size)
    try:
        listener = _listen(settings.host, settings.port)
    except BaseException:
        service.catalog.close()
        raise
    server = Server(
        service, context, certificate_der, signing_key, net, limits, listener, stopping=stop
    )
    host, port = server.address
    log.info(
        "listening on %s:%d",
        host,
        port,
        extra=fields(data=str(settings.data), inbox=settings.inbox),
    )
    return server
