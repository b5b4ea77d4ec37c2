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

from imgshare import images, pki, tls
from imgshare.accounts import Accounts
from imgshare.config import ServerSettings
from imgshare.errors import ConfigError, StorageError
from imgshare.logs import fields
from imgshare.protocol import Limits
from imgshare.protocol.keys import SigningKey, scheme_for
from imgshare.server.network import NetworkSettings, Server
from imgshare.server.service import Service
from imgshare.store import (
    FileBlobStore,
    Inbox,
    SQLiteCatalog,
    StorageKey,
    load_or_create_storage_key,
    storage_key_from_env,
    sweep,
)

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
    settings: ServerSettings, password_hasher: PasswordHasher | None = None
) -> Service:
    """Open (or create) the data folder's stores and sweep what a crash left."""
    images.load_plugins()  # now, not under the import lock of 200 first uploads
    paths = DataPaths(settings.data)
    catalog = open_catalog(settings.data)
    blobs = FileBlobStore(paths.root)  # DATA/objects/, temp files in DATA/tmp/
    inbox = Inbox(paths.inbox) if settings.inbox else None
    try:
        paths.scratch.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {paths.scratch}: {exc.strerror}") from exc
    report = sweep(blobs, inbox if inbox is not None else Inbox(paths.inbox), catalog)
    if not report.clean:
        log.warning("start-up sweep removed leftovers of a crash", extra=fields(report=report))
    return Service(
        catalog=catalog,
        blobs=blobs,
        inbox=inbox,
        storage_key=_storage_key(settings),
        accounts=Accounts(catalog, hasher=password_hasher),
        image_policy=images.ImagePolicy(max_pixels=settings.max_pixels),
        scratch_dir=paths.scratch,
        quota_bytes=settings.quota_bytes,
        max_login_failures=settings.max_login_failures,
    )


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


def _raise_open_file_limit(wanted: int) -> None:
    """Each connection is a file descriptor: lift the soft limit towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("open-file limit raised", extra=fields(soft=target, hard=hard))
    if target < wanted:
        log.warning("open-file limit %d is below what max_connections needs (%d)", target, wanted)


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
    _raise_open_file_limit(settings.max_connections + 256)  # + files, catalog, listener
    _certificates(settings)
    certificate_der, signing_key, passphrase = _signing_identity(settings)
    context = tls.create_server_context(
        settings.cert_path,
        settings.key_path,
        password=passphrase,
        client_ca=settings.client_ca,
        min_version="1.2" if settings.tls_min == "1.2" else "1.3",
    )
    service = build_service(settings, password_hasher)
    net = NetworkSettings(
        max_connections=settings.max_connections,
        max_connections_per_address=settings.max_connections_per_address,
        trusted_networks=settings.trusted_networks,
        tls_handshake_timeout=settings.tls_handshake_timeout,
        app_handshake_timeout=settings.app_handshake_timeout,
        idle_timeout=settings.idle_timeout,
        transfer_timeout=settings.transfer_timeout,
    )
    limits = Limits(max_image_size=settings.max_image_size)
    server = Server(
        service,
        context,
        certificate_der,
        signing_key,
        net,
        limits,
        _listen(settings.host, settings.port),
        stopping=stop,
    )
    host, port = server.address
    log.info(
        "listening on %s:%d",
        host,
        port,
        extra=fields(data=str(settings.data), inbox=settings.inbox),
    )
    return server
