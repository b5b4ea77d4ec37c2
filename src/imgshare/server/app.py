"""Assemble a server from its settings: data folder, certificates, keys, store, sweep.

Two ways to run. ``build_server`` makes a whole server in this process (the tests do).
``imgshare serve`` runs ``imgshare.server.supervisor``, which prepares the data
folder once (``prepare``: lock, certificates, catalog, sweep), opens the listening
socket and starts worker processes that each call ``build_worker`` with their share
of the limits (``Shares``).

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

from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization

from imgshare import pki, tls
from imgshare.errors import ConfigError
from imgshare.logs import fields
from imgshare.protocol import Limits
from imgshare.protocol.keys import scheme_for
from imgshare.server import images
from imgshare.server.accounts import DEFAULT_MAX_CONCURRENT_HASHES, Accounts
from imgshare.server.config import ServerSettings
from imgshare.server.logins import HashGate, LoginThrottle, ThrottlePolicy
from imgshare.server.network import Identity, NetworkSettings, Server
from imgshare.server.service import Service
from imgshare.server.uploads import MIB, MIN_UPLOAD_MEMORY, MemoryBudget
from imgshare.store import (
    DataFolderStore,
    StorageKey,
    StoreConfig,
    inbox_path,
    load_or_create_storage_key,
    make_data_folder,
    open_store,
    storage_key_from_env,
)
from imgshare.store.lock import DataFolderLock, check_writable

log = logging.getLogger(__name__)

STORAGE_KEY_ENV = "IMGSHARE_STORAGE_KEY"


@dataclass(frozen=True)
class Shares:
    """What one of ``workers`` processes gets of the server-wide limits: each counts
    its own connections and holds its own upload memory and password checks."""

    connections: int
    per_address: int
    unauthenticated: int
    upload_memory: int
    hash_slots: int

    @classmethod
    def of(cls, settings: ServerSettings, workers: int = 1) -> Shares:
        def part(total: int) -> int:
            return max(1, total // workers)

        return cls(
            connections=part(settings.max_connections),
            per_address=part(settings.max_connections_per_address),
            unauthenticated=part(settings.unauthenticated_cap),
            upload_memory=max(MIN_UPLOAD_MEMORY, settings.upload_memory // workers),
            hash_slots=part(DEFAULT_MAX_CONCURRENT_HASHES),
        )


# -- things on disk -------------------------------------------------------------------


def storage_key(
    settings: ServerSettings, *, quiet: bool = False, create: bool = True
) -> StorageKey:
    """The storage key: from ``IMGSHARE_STORAGE_KEY``, or the key file (made if
    missing, when ``create``). Raises ``ConfigError``, ``StorageError``."""
    from_env = os.environ.get(STORAGE_KEY_ENV)
    if from_env:
        if not quiet:
            log.info("storage key from the environment", extra=fields(variable=STORAGE_KEY_ENV))
        return storage_key_from_env(from_env)
    path = settings.storage_key_path
    created = not path.exists()
    if created and not create:
        raise ConfigError(
            f"there is no storage key file {path} and {STORAGE_KEY_ENV} is not set, but the "
            "catalog holds images sealed under a storage key: give this server the same "
            "key as the others (copy their key file, or set the variable); a new key "
            "would open none of them"
        )
    key = load_or_create_storage_key(path)
    if not quiet:
        log.info("storage key %s", "created" if created else "loaded", extra=fields(path=str(path)))
    return key


def ensure_certificates(settings: ServerSettings) -> None:
    """Make the CA and server certificate on first start (unless given). Raises
    ``ConfigError``, ``CertificateError``."""
    if settings.cert is None and settings.key is None:
        hosts = list(pki.DEFAULT_HOSTS) + list(settings.extra_hosts)
        paths = pki.ensure_server_certificates(settings.cert_dir, hosts)
        log.info(
            "certificates ready",
            extra=fields(ca=str(paths.ca_cert), cert=str(paths.server_cert)),
        )
    elif settings.cert is None or settings.key is None:
        raise ConfigError("give both --cert and --key, or neither")


def load_identity(settings: ServerSettings) -> Identity:
    """The TLS context and the application handshake's certificate and key, from the
    files the settings name. Raises ``ConfigError``, ``CertificateError``."""
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
    context = tls.create_server_context(
        settings.cert_path,
        settings.key_path,
        password=passphrase,
        client_ca=settings.client_ca,
        min_version="1.2" if settings.tls_min == "1.2" else "1.3",
    )
    return Identity(context, cert.public_bytes(serialization.Encoding.DER), key)


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket (with ``reuse_port``, one of several on the same port that
    the kernel shares connections between). Raises ``ConfigError`` (address taken...)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(address)
        listener.listen(1024)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


def store_config(settings: ServerSettings, key: StorageKey | None) -> StoreConfig:
    """How the settings map onto the storage factory."""
    return StoreConfig(
        data=settings.data,
        storage_key=key,
        inbox=settings.inbox,
        quota_bytes=settings.quota_bytes,
        uploads_per_user=settings.max_uploads_per_user,
        sweep_after=settings.sweep_after,
        catalog_url=settings.catalog_url,
        object_store_url=settings.object_store_url,
        inbox_location=settings.inbox_location,
        s3_endpoint=settings.s3_endpoint,
        s3_access_key=settings.s3_access_key,
        s3_secret_key=settings.s3_secret_key,
        s3_region=settings.s3_region,
        catalog_pool=settings.catalog_pool,
        sync_every=settings.upload_sync_bytes,  # issue 12: resumable uploads
        resume_for=settings.resume_for,
    )


# -- limits of the process ------------------------------------------------------------


def open_files_needed(settings: ServerSettings) -> int:
    """Descriptors the server may need at once: one per connection, four per upload
    in flight (sealed and plaintext temp files, the image check, the reader's wake-up
    descriptor), and a margin for the catalog, the listener, certificates and logs."""
    uploads = settings.upload_memory // MIN_UPLOAD_MEMORY
    return settings.max_connections + 4 * uploads + 64


def raise_open_file_limit(settings: ServerSettings) -> None:
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


#: Resident memory of a server process at rest (Python, OpenSSL, Pillow, SQLite),
#: rounded up (measured: 45 MiB).
BASE_MEMORY = 128 * MIB
#: Resident memory one open connection may hold: its thread's stack pages, its TLS
#: buffers and its small read buffer (measured: 73 KiB for an idle logged-in one).
CONNECTION_MEMORY = 256 * 1024


def memory_bound(settings: ServerSettings, workers: int = 1) -> int:
    """The most resident memory the server's processes need together with these
    settings (docs/security.md): each at rest, plus every connection, plus the buffers
    of all uploads in flight (``upload_memory``), plus the decodes of image checks
    (``decode_memory`` in each process, or one decode of ``max_pixels`` if larger)."""
    decodes = max(settings.decode_memory, images.largest_decode(settings.max_pixels))
    connections = settings.max_connections * CONNECTION_MEMORY
    return workers * (BASE_MEMORY + decodes) + connections + settings.upload_memory


# -- assembling -----------------------------------------------------------------------


def prepare(settings: ServerSettings) -> tuple[DataFolderLock, DataFolderStore]:
    """Take the data folder for this server: its lock first, then the certificates,
    the store (the catalog migrated, each bucket reached), the storage key checked
    against the catalog's, and the folders' writability.

    Raises ``DataFolderInUse``, ``StorageError``, ``ConfigError``, ``CertificateError``.
    """
    make_data_folder(settings.data)
    raise_open_file_limit(settings)
    lock = DataFolderLock.acquire(settings.data)  # before anything else touches the folder
    try:
        ensure_certificates(settings)
        data, inbox = settings.data, inbox_path(settings.data)
        existing = [p for p in (data / "tmp", data / "objects", inbox / ".tmp") if p.exists()]
        check_writable(data, *existing)
        store = open_store(store_config(settings, None))
    except BaseException:
        lock.release()
        raise
    try:
        store.check()
        # A new key only for a catalog that has none: another would open nothing.
        store.adopt_key(storage_key(settings, create=not store.key_check_recorded()))
    except BaseException:
        store.close()
        lock.release()
        raise
    log.info("storage ready", extra=fields(**store.describe()))
    return lock, store


def sweep_at_start(store: DataFolderStore) -> None:
    """The start-up sweep: every leftover of a crash, whatever its age, where nothing
    else can be writing (under the data folder's lock, before the workers start); with
    shared storage, what other nodes may be writing only by age, by one node at a time."""
    report = store.sweep(exclusive=True)
    if not report.clean:
        log.warning("start-up sweep removed leftovers of a crash", extra=fields(report=report))


def build_service(
    settings: ServerSettings,
    store: DataFolderStore,
    password_hasher: PasswordHasher | None = None,
    *,
    shares: Shares,
    lock: DataFolderLock | None = None,
) -> Service:
    """What this process's sessions share, over ``store``."""
    images.load_plugins()  # now, not under the import lock of 200 first uploads
    policy = ThrottlePolicy(
        free_per_account=settings.login_failures_per_account,
        free_per_address=settings.login_failures_per_address,
        base_delay=settings.login_delay,
        max_delay=settings.login_delay_max,
    )
    accounts = Accounts(
        store.catalog,
        hasher=password_hasher,
        gate=HashGate(shares.hash_slots),
        throttle=LoginThrottle(store.catalog, policy),
    )
    service = Service(
        store=store,
        accounts=accounts,
        image_policy=images.ImagePolicy(
            max_pixels=settings.max_pixels,
            decode_memory=images.DecodeMemory(settings.decode_memory),
        ),
        upload_memory=MemoryBudget(shares.upload_memory),
        max_login_failures=settings.max_login_failures,
        registration=settings.registration,
        registrations_per_address=settings.registrations_per_address,
        lock=lock,
    )
    service.start_thumbnail_maker()  # issue 12: thumbnails after the receipt, when idle
    return service


def network_settings(settings: ServerSettings, shares: Shares) -> NetworkSettings:
    return NetworkSettings(
        max_connections=shares.connections,
        max_connections_per_address=shares.per_address,
        max_unauthenticated=shares.unauthenticated,
        trusted_networks=settings.trusted_networks,
        tls_handshake_timeout=settings.tls_handshake_timeout,
        app_handshake_timeout=settings.app_handshake_timeout,
        login_timeout=settings.login_timeout,
        idle_timeout=settings.idle_timeout,
        min_transfer_bytes=settings.min_transfer_bytes,
        transfer_window=settings.transfer_window,
    )


def build_worker(
    settings: ServerSettings,
    listener: socket.socket,
    *,
    workers: int,
    password_hasher: PasswordHasher | None = None,
    stop: threading.Event | None = None,
) -> Server:
    """One worker of a supervised server: its own store connection and identity over
    the supervisor's listening socket; no lock (the supervisor holds it), no sweep."""
    shares = Shares.of(settings, workers)
    store = open_store(store_config(settings, storage_key(settings, quiet=True)))
    try:
        service = build_service(settings, store, password_hasher, shares=shares)
        identity = load_identity(settings)
    except BaseException:
        store.close()
        raise
    limits = Limits(max_image_size=settings.max_image_size)
    net = network_settings(settings, shares)
    return Server(service, identity, net, limits, listener, stopping=stop)


def build_server(
    settings: ServerSettings,
    password_hasher: PasswordHasher | None = None,
    *,
    stop: threading.Event | None = None,
) -> Server:
    """A whole server in this process, ready to serve (listening already, so
    ``address`` is known).

    ``password_hasher`` replaces the argon2id defaults (tests use cheap parameters).
    ``stop``, if given, becomes the server's stop flag: setting it (from a signal
    handler, even before this returns) makes ``serve_forever`` return.
    """
    lock, store = prepare(settings)
    try:
        sweep_at_start(store)
        shares = Shares.of(settings)
        service = build_service(settings, store, password_hasher, shares=shares, lock=lock)
        identity = load_identity(settings)
        listener = listen(settings.host, settings.port)
    except BaseException:
        store.close()
        lock.release()
        raise
    limits = Limits(max_image_size=settings.max_image_size)
    server = Server(
        service, identity, network_settings(settings, shares), limits, listener, stopping=stop
    )
    log_listening(server, settings)
    return server


def log_listening(server: Server, settings: ServerSettings) -> None:
    host, port = server.address
    log.info(
        "listening on %s:%d",
        host,
        port,
        extra=fields(data=str(settings.data), inbox=settings.inbox),
    )
