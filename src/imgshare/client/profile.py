"""The login profile: which server, which CA, who, and the token that logs in.

``imgshare login`` saves one after a password login; later commands read it so that
they need no flags and cost a token lookup instead of an argon2id hash. It lives in
``$IMGSHARE_CONFIG`` if that is set, else ``$XDG_CONFIG_HOME/imgshare/profile.json``
(``~/.config/imgshare/profile.json``). It is self-contained: the server's CA is kept
as PEM text, so moving or deleting the original ``ca.pem`` does not break it.

A profile holds a login token, so it is written atomically with mode 0600 (its folder
0700) and refused, with what to do, when anyone else could read or change it. A
password is never stored.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from imgshare.errors import ConfigError, StorageError
from imgshare.store.blobs import AtomicFile

#: The format of the file; a newer one is refused rather than misread.
PROFILE_VERSION = 1
FILE_MODE = 0o600
FOLDER_MODE = 0o700
#: Larger is not a profile (a CA bundle is a few KiB).
MAX_PROFILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """What a profile holds. ``token`` is None once logged out."""

    server: str  # HOST:PORT
    ca_pem: str  # the CA certificate(s) that signed the server's, as PEM
    user: str
    token: str | None = field(default=None, repr=False)
    token_id: int | None = None
    token_expires_ms: int = 0  # 0: never
    #: For a server that wants client certificates at the TLS layer: their paths.
    client_cert: str | None = None
    client_key: str | None = None

    def without_token(self) -> Profile:
        return replace(self, token=None, token_id=None, token_expires_ms=0)

    def ca_certificates(self) -> list[x509.Certificate]:
        """The CA certificates, parsed. Raises ``ConfigError``."""
        try:
            found = x509.load_pem_x509_certificates(self.ca_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            found = []
        if not found:
            raise ConfigError("the profile's CA certificate does not load")
        return found


def default_path(environ: dict[str, str] | None = None) -> Path:
    """Where the profile lives (see the module docstring)."""
    env = os.environ if environ is None else environ
    explicit = env.get("IMGSHARE_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "imgshare" / "profile.json"


def _is_default_folder(path: Path) -> bool:
    return path.name == "profile.json" and path.parent.name == "imgshare"


def load(path: Path | None = None) -> Profile | None:
    """The profile at ``path`` (default: ``default_path()``), or None if there is none.

    Raises ``ConfigError`` naming the file and what to do when it cannot be used:
    others may read or change it, it is not ours, not JSON, or not a profile.
    """
    path = default_path() if path is None else path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the profile {path}: {exc.strerror}") from exc
    try:
        _check_private(path, os.fstat(fd))
        chunks, size = [], 0
        while size <= MAX_PROFILE_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read the profile {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_PROFILE_BYTES:
        raise ConfigError(f"{path} is too large to be an imgshare profile: {_START_OVER}")
    return _parse(path, raw)


_START_OVER = "delete it and run `imgshare login` again"


def _check_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"the profile {path} is not a regular file: {_START_OVER}")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"the profile {path} belongs to another user (uid {info.st_uid}): use your own "
            "(set IMGSHARE_CONFIG to a file of yours) and run `imgshare login`"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"the profile {path} has mode {mode:04o}: others may read its login token or "
            f"change the server it trusts. Run `chmod 600 {path}`; if someone else could "
            "have read it, also `imgshare logout` and `imgshare login` for a new token"
        )


def _parse(path: Path, raw: bytes) -> Profile:
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"the profile {path} is not UTF-8 text: {_START_OVER}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"the profile {path} is not valid JSON (line {exc.lineno}, column {exc.colno}): "
            f"fix it, or {_START_OVER}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"the profile {path} is not a JSON object: {_START_OVER}")
    version = data.get("version")
    if version != PROFILE_VERSION:
        raise ConfigError(
            f"the profile {path} has version {version!r}, and this imgshare reads version "
            f"{PROFILE_VERSION}: upgrade imgshare, or {_START_OVER}"
        )
    try:
        profile = Profile(
            server=_field(data, "server", str),
            ca_pem=_field(data, "ca_pem", str),
            user=_field(data, "user", str),
            token=_optional(data, "token", str),
            token_id=_optional(data, "token_id", int),
            token_expires_ms=_optional(data, "token_expires_ms", int) or 0,
            client_cert=_optional(data, "client_cert", str),
            client_key=_optional(data, "client_key", str),
        )
        profile.ca_certificates()
    except ConfigError as exc:
        raise ConfigError(f"the profile {path} is damaged ({exc}): {_START_OVER}") from None
    if (profile.token is None) != (profile.token_id is None):
        raise ConfigError(f"the profile {path} is damaged (a token without its id): {_START_OVER}")
    return profile


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or value == "":
        raise ConfigError(f"{name!r} is missing or not a {kind.__name__}")
    return value


def _optional(data: dict[str, Any], name: str, kind: type) -> Any:
    return None if data.get(name) is None else _field(data, name, kind)


def save(profile: Profile, path: Path | None = None) -> Path:
    """Write ``profile`` to ``path`` (default: ``default_path()``) atomically, mode 0600;
    return the path. A missing folder is made with mode 0700, and so is imgshare's own
    folder made private. Raises ``ConfigError``."""
    path = default_path() if path is None else path
    folder = path.parent
    try:
        if not folder.exists():
            folder.mkdir(parents=True, mode=FOLDER_MODE)
            os.chmod(folder, FOLDER_MODE)  # whatever the umask
        elif _is_default_folder(path) and stat.S_IMODE(folder.stat().st_mode) != FOLDER_MODE:
            os.chmod(folder, FOLDER_MODE)
    except OSError as exc:
        why = exc.strerror or exc
        raise ConfigError(f"cannot make the folder {folder} for the profile: {why}") from exc
    body = {"version": PROFILE_VERSION, **asdict(profile)}
    text = json.dumps(body, indent=2) + "\n"
    try:
        with AtomicFile(path, folder, mode=FILE_MODE) as out:
            out.write(text.encode("utf-8"))
            out.commit()
    except StorageError as exc:
        raise ConfigError(f"cannot save the profile {path}: {exc}") from exc
    return path
