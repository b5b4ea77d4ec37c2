"""Server settings: defaults < TOML file < ``IMGSHARE_*`` environment < command-line flags.

One frozen dataclass names every setting once; the file keys, the environment
variables (``IMGSHARE_`` + upper-case name) and the flags are all derived from its
field names, so the three sources can never drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgshare.errors import ConfigError
from imgshare.protocol.constants import DEFAULT_PORT

ENV_PREFIX = "IMGSHARE_"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Every server setting with its default. Sizes are bytes, times seconds."""

    data: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # TLS
    cert: Path | None = None  # default DATA/certs/server.pem, created on first start
    key: Path | None = None
    key_passphrase_file: Path | None = None
    client_ca: Path | None = None  # require client certificates from this CA
    tls_min: str = "1.3"
    # storage
    inbox: bool = True
    storage_key_file: Path | None = None  # default DATA/storage.key
    # several nodes (docs/operations.md, "Several nodes"): where what they share lives
    catalog_url: str = field(default="", repr=False)  # "": SQLite in DATA; postgresql://...
    object_store_url: str = ""  # "": DATA/objects; s3://bucket/prefix, or a shared folder
    inbox_location: str = ""  # "": DATA/inbox; a shared folder, or s3://bucket/prefix
    s3_endpoint: str = ""  # "": AWS_ENDPOINT_URL (or AWS itself)
    s3_access_key: str = ""  # "": AWS_ACCESS_KEY_ID
    s3_secret_key: str = field(default="", repr=False)  # "": AWS_SECRET_ACCESS_KEY
    s3_region: str = ""  # "": AWS_REGION, AWS_DEFAULT_REGION or us-east-1
    catalog_pool: int = 8  # connections to PostgreSQL per worker process
    # limits (docs/security.md explains each)
    max_connections: int = 2048
    max_connections_per_address: int = 128
    max_unauthenticated: int = 0  # connections not logged in yet; 0: max_connections // 8
    trusted_networks: tuple[str, ...] = ()  # exempt from the per-address cap; none by default
    max_image_size: int = 256 * MIB
    max_pixels: int = 100_000_000
    decode_memory: int = 1024 * MIB  # image checks that decode, together (one may exceed it)
    quota_bytes: int = 10 * 1024 * MIB
    max_uploads_per_user: int = 4  # uploads in flight at once
    upload_memory: int = 256 * MIB  # buffers of all uploads in flight
    min_transfer_bytes: int = 64 * 1024  # per transfer_window while an image streams
    # resumable uploads (docs/protocol.md, 7.10)
    upload_sync_bytes: int = 8 * MIB  # an upload is made durable this often; 0: never
    resume_for: float = 86400.0  # how long a cut-off upload may be resumed
    # accounts
    registration: str = "closed"  # "closed", "invite" or "open"
    registrations_per_address: int = 5  # per hour, when registration is open
    # logins
    max_login_failures: int = 5  # per connection, then it is closed
    login_failures_per_account: int = 5  # free failures before logins are delayed
    login_failures_per_address: int = 20
    login_delay: float = 1.0  # the first delay; it doubles with every failure
    login_delay_max: float = 60.0
    # time
    tls_handshake_timeout: float = 10.0
    app_handshake_timeout: float = 10.0
    login_timeout: float = 10.0  # application handshake -> logged in
    idle_timeout: float = 300.0
    transfer_window: float = 20.0
    shutdown_grace: float = 10.0
    sweep_after: float = 3600.0  # files without a catalog row older than this are swept
    # processes
    workers: int = 0  # worker processes; 0: one per CPU
    listen_mode: str = "shared"  # "shared": one listening socket; "reuseport": one each
    # logging
    log_format: str = "human"
    log_level: str = "info"
    extra_hosts: tuple[str, ...] = field(default=())  # more SANs for the first-start certificate

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, not {self.port}")
        if self.tls_min not in ("1.2", "1.3"):
            raise ConfigError(f"tls_min must be '1.2' or '1.3', not {self.tls_min!r}")
        if self.registration not in ("closed", "invite", "open"):
            raise ConfigError(
                f"registration must be 'closed', 'invite' or 'open', not {self.registration!r}"
            )
        if self.listen_mode not in ("shared", "reuseport"):
            raise ConfigError(
                f"listen_mode must be 'shared' or 'reuseport', not {self.listen_mode!r}"
            )
        if self.log_format not in ("human", "json"):
            raise ConfigError(f"log_format must be 'human' or 'json', not {self.log_format!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log_level must be debug, info, warning or error, not {self.log_level!r}"
            )
        for name in (
            "max_connections",
            "max_connections_per_address",
            "max_image_size",
            "max_pixels",
            "decode_memory",
            "max_uploads_per_user",
            "upload_memory",
            "min_transfer_bytes",
            "max_login_failures",
            "catalog_pool",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in (
            "quota_bytes",
            "upload_sync_bytes",
            "workers",
            "max_unauthenticated",
            "login_failures_per_account",
            "login_failures_per_address",
            "registrations_per_address",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more")
        if self.max_unauthenticated > self.max_connections:
            raise ConfigError("max_unauthenticated must not exceed max_connections")
        for name in (
            "tls_handshake_timeout",
            "app_handshake_timeout",
            "login_timeout",
            "idle_timeout",
            "transfer_window",
            "login_delay",
            "login_delay_max",
            "shutdown_grace",
            "sweep_after",
            "resume_for",
        ):
            seconds = getattr(self, name)
            if (
                not math.isfinite(seconds)
                or seconds < 0
                or (seconds == 0 and name != "shutdown_grace")
            ):
                raise ConfigError(f"{name} must be a finite number of seconds above 0")
        self._check_storage()
        for network in self.trusted_networks:
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ConfigError(f"trusted_networks: {network!r} is not a network") from exc

    def _check_storage(self) -> None:
        """Where shared things live: a URL of the right kind, and, with a catalog that
        several nodes share, nothing that would silently stay on one node's disk."""
        if self.catalog_url and not self.catalog_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("catalog_url must be a postgresql:// URL (or empty: SQLite in data)")
        for name in ("object_store_url", "inbox_location"):
            value = getattr(self, name)
            if "://" in value and not value.startswith("s3://"):
                raise ConfigError(f"{name} must be s3://bucket/prefix or a folder, not {value!r}")
        if not self.catalog_url:
            return
        if not self.object_store_url:
            raise ConfigError(
                "catalog_url names a catalog that several nodes share, but the sealed "
                "objects would stay in this node's data folder, where no other node sees "
                "them: set object_store_url to s3://bucket/prefix or to a folder every "
                "node mounts"
            )
        if self.inbox and not self.inbox_location:
            raise ConfigError(
                "catalog_url names a catalog that several nodes share, but the decrypted "
                "inbox copies would go to this node's data folder: set inbox_location to a "
                "folder every node mounts or to s3://bucket/prefix, or inbox = false; to "
                "keep each node's copies on its own disk knowingly, name that folder in "
                "inbox_location"
            )

    @property
    def worker_count(self) -> int:
        """Worker processes to run: the setting, or one per CPU."""
        return self.workers or os.cpu_count() or 1

    @property
    def unauthenticated_cap(self) -> int:
        """Connections that may wait to log in at once: the setting, or an eighth of
        ``max_connections`` (256 of the default 2048)."""
        return self.max_unauthenticated or max(1, self.max_connections // 8)

    @property
    def cert_dir(self) -> Path:
        return self.data / "certs"

    @property
    def cert_path(self) -> Path:
        return self.cert or self.cert_dir / "server.pem"

    @property
    def key_path(self) -> Path:
        return self.key or self.cert_dir / "server.key"

    @property
    def storage_key_path(self) -> Path:
        return self.storage_key_file or self.data / "storage.key"


_FIELDS = {f.name: f for f in dataclasses.fields(ServerSettings)}
_DEFAULTS = ServerSettings()
_OPTIONAL_PATHS = frozenset({"cert", "key", "key_passphrase_file", "client_ca", "storage_key_file"})


def _convert(name: str, value: Any, source: str) -> Any:
    """Turn a file or environment value into the field's type; clear error if it can't."""
    default: Any = getattr(_DEFAULTS, name)
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, tuple):
            items = value if isinstance(value, list) else str(value).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        if isinstance(default, Path):
            if str(value).strip() == "":
                raise ValueError(value)
            return Path(str(value))
        if name in _OPTIONAL_PATHS:
            return Path(str(value)) if value not in (None, "") else None
        if isinstance(value, bool):  # TOML true is not a number
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, float):  # 8443.9 is not a port: refuse, don't truncate
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name} has an invalid value {value!r}") from exc


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerSettings:
    """Merge defaults, the TOML file, ``IMGSHARE_*`` variables and flags (in that order).

    Raises ``ConfigError`` for an unreadable file, an unknown key or a bad value.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_from_file(config_file))
    env = os.environ if environ is None else environ
    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _convert(name, raw, f"environment {ENV_PREFIX + name.upper()}")
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return ServerSettings(**values)


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    section = raw.get("server", raw)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [server] must be a table")
    if section is not raw and len(raw) > 1:
        others = ", ".join(sorted(k for k in raw if k != "server"))
        raise ConfigError(f"config file {path}: settings outside [server]: {others}")
    unknown = sorted(set(section) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return {name: _convert(name, value, f"config file {path}") for name, value in section.items()}
