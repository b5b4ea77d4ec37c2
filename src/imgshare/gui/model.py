"""What the desktop GUI does, without Tk: log in, send, browse, share, save.

``Controller`` wraps one ``imgshare.Client`` (docs/client.md). Its methods wait on the
network, so the window calls them only through ``imgshare.gui.worker.Worker``, one at
a time on the worker's thread; they return plain data or raise ``ImgshareError``,
whose text ``describe`` turns into what the window shows. The ``*_text`` functions
are the words the window shows, kept here so that they are tested without a display
and say what the command line says (README.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from imgshare.errors import ConfigError, ImgshareError, PeerError
from imgshare.protocol.constants import ErrorCode
from imgshare.safetext import escape
from imgshare.units import human_size

if TYPE_CHECKING:
    from imgshare.client.api import Client, ImageEntry, Progress, ShareInfo
    from imgshare.client.profile import Profile
    from imgshare.client.session import DownloadResult, UploadResult

log = logging.getLogger(__name__)

#: Uploads at once: with a token each connection's login is a lookup; with a password
#: each costs the server an argon2id hash, so one (the command line's rule, docs/client.md).
PARALLEL_WITH_TOKEN = 4
#: How ``Client.get`` says that a file is in the way; the window has no --force.
_CLI_OVERWRITE = "(use --force to overwrite)"


@dataclass(frozen=True)
class LoginForm:
    """What the login fields hold. ``ca`` empty: the saved profile's CA when the
    profile is for this server, else the system's CAs."""

    server: str
    ca: str
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Tile:
    """One image of the gallery: its entry, and its thumbnail (None: ``error`` says why)."""

    entry: ImageEntry
    thumbnail: bytes | None
    error: str | None = None

    @property
    def image_id(self) -> str:
        return self.entry.image_id.hex()


@dataclass(frozen=True)
class Saved:
    """What ``Controller.save`` wrote, and what it could not."""

    written: list[DownloadResult]
    failed: list[tuple[str, str]]  # (image id, why)


class Controller:
    """The GUI's session with one server. Not thread-safe: call it from one thread
    (the worker's), except ``saved_profile``."""

    def __init__(self, profile_path: Path | None = None) -> None:
        self.profile_path = profile_path
        self.client: Client | None = None
        self.user: str | None = None
        self.server: str | None = None
        self._parallel = 1
        self._thumbnails: dict[str, bytes] = {}

    # -- logging in ------------------------------------------------------------------

    def saved_profile(self) -> Profile | None:
        """The login ``imgshare login`` saved, or None. Raises ``ConfigError`` with
        what to do when the file is there but cannot be used."""
        from imgshare.client import profile

        return profile.load(self.profile_path)

    def log_in(self, form: LoginForm) -> str:
        """Log in with a password; return the user name the server knows."""
        client = self._new_client(form)
        try:
            name = client.login(_required(form.user, "user"), _required(form.password, "password"))
        except PeerError as exc:
            client.close()
            if exc.code is ErrorCode.AUTH_FAILED:
                raise PeerError(f"{exc}: check the user name and the password", exc.code) from exc
            raise
        except BaseException:
            client.close()
            raise
        return self._logged_in(client, name, parallel=1)

    def log_in_saved(self) -> str:
        """Log in with the token that `imgshare login` saved (no password asked)."""
        from imgshare.client.api import Client

        client = Client.from_profile(self.profile_path, retries=0)
        try:
            name = client.user or ""
        except PeerError as exc:
            client.close()
            if exc.code is ErrorCode.AUTH_FAILED:
                raise PeerError(
                    f"{exc}: your saved login on {client.server} no longer works (its token "
                    "was revoked or has expired): log in with your password, or run "
                    "`imgshare login` again",
                    exc.code,
                ) from exc
            raise
        except BaseException:
            client.close()
            raise
        return self._logged_in(client, name, parallel=PARALLEL_WITH_TOKEN)

    def register(self, form: LoginForm) -> str:
        """Make the account (where the server allows it), then log in as it."""
        client = self._new_client(form)
        try:
            client.register(_required(form.user, "user"), _required(form.password, "password"))
        except PeerError as exc:
            if exc.code is ErrorCode.FORBIDDEN:
                raise PeerError(
                    f"{exc}: this server does not let people register here; ask its "
                    "operator for an account, or for an invitation to use with "
                    "`imgshare register --invite CODE`",
                    exc.code,
                ) from exc
            raise
        finally:
            client.close()
        return self.log_in(form)

    def _new_client(self, form: LoginForm) -> Client:
        from imgshare.client.api import Client
        from imgshare.client.diagnose import parse_server, server_text

        host, port = parse_server(_required(form.server, "server"))
        server = server_text(host, port)
        # No retries while logging in: a person is watching and can click again, and a
        # CA that does not sign the server's certificate fails the same way each time.
        if form.ca.strip():
            return Client(server, ca=Path(form.ca.strip()).expanduser(), retries=0)
        saved = self._profile_quietly()
        if saved is not None and parse_server(saved.server) == (host, port):
            return Client(
                server,
                ca_pem=saved.ca_pem,
                client_cert=saved.client_cert,
                client_key=saved.client_key,
                retries=0,
            )
        return Client(server, retries=0)

    def _profile_quietly(self) -> Profile | None:
        try:
            return self.saved_profile()
        except ConfigError:
            return None

    def _logged_in(self, client: Client, name: str, *, parallel: int) -> str:
        from imgshare.client.api import DEFAULT_RETRIES

        client.retries = DEFAULT_RETRIES  # from now on, network trouble is tried again
        self.close()
        self.client, self.user, self.server = client, name, client.server
        self._parallel = parallel
        return name

    @property
    def _client(self) -> Client:
        if self.client is None:
            raise ConfigError("not logged in: log in first")
        return self.client

    # -- requests (worker thread) ----------------------------------------------------

    def send(
        self, paths: Sequence[str | Path], progress: Callable[[Progress], None]
    ) -> list[Progress]:
        """Send files and folders; ``progress`` is called from send's own threads."""
        return self._client.send(paths, progress=progress, parallel=self._parallel)

    def gallery(self, shared_with_me: bool) -> list[Tile]:
        """My images (or those shared with me), newest first, each with its thumbnail
        (fetched once, then kept)."""
        client = self._client
        tiles = []
        for entry in reversed(client.list(shared_with_me=shared_with_me)):
            image_id = entry.image_id.hex()
            data = self._thumbnails.get(image_id)
            error = None
            if data is None:
                try:
                    data = self._thumbnails[image_id] = client.thumbnail(image_id)
                except PeerError as exc:  # the others still show
                    error = str(exc)
            tiles.append(Tile(entry, data, error))
        return tiles

    def shares(self, image_id: str) -> list[ShareInfo]:
        return self._client.shares(image_id)

    def share(self, image_id: str, user: str, expires: str) -> list[ShareInfo]:
        """Share (an empty ``expires``: until unshared); return who can now see it."""
        self._client.share(image_id, _required(user, "share with"), expires=expires.strip() or None)
        return self.shares(image_id)

    def unshare(self, image_id: str, user: str) -> list[ShareInfo]:
        self._client.unshare(image_id, _required(user, "share with"))
        return self.shares(image_id)

    def delete(self, image_id: str) -> None:
        self._client.delete(image_id)
        self._thumbnails.pop(image_id, None)

    def save(self, image_ids: Sequence[str], folder: Path) -> Saved:
        """Fetch each image, checked end to end, into ``folder`` under its sent name
        (an existing file is not replaced: that image is reported as not saved)."""
        saved = Saved([], [])
        for image_id in image_ids:
            try:
                saved.written.append(self._client.get(image_id, folder=folder))
            except ImgshareError as exc:
                why = describe(exc).replace(_CLI_OVERWRITE, "(choose another folder, or move it)")
                saved.failed.append((image_id, why))
        return saved

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = self.user = self.server = None
        self._thumbnails.clear()


def _required(value: str, what: str) -> str:
    if not value.strip():
        raise ConfigError(f"{what}: this field is empty")
    return value if what == "password" else value.strip()


# --- the words the window shows -------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """An error as a person can act on it: the project's own messages already say
    what to do (TLS trouble: ``imgshare.client.diagnose``); a refusal gets the
    command line's hint; anything else is named and logged."""
    if isinstance(exc, PeerError):
        from imgshare.cli.client import refusal

        text = refusal(exc)
    elif isinstance(exc, ImgshareError):
        text = str(exc)
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror or exc}"
    else:
        log.error("unexpected error in the GUI", exc_info=exc)
        text = f"unexpected error ({type(exc).__name__}: {exc}); the log has the details"
    return shown(text)


def shown(text: str) -> str:
    """Text to show, each line escaped as the command line escapes it: names and
    messages come from other people and the server (docs/security.md, "names")."""
    return "\n".join(escape(line) for line in text.split("\n"))


def iso(ms: int) -> str:
    """The command line's time format (UTC, milliseconds)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def progress_text(update: Progress) -> str:
    """One line for a file's progress bar."""
    if update.state == "sending" and update.total:
        percent = 100 * update.sent // update.total
        return f"sending {percent} % ({human_size(update.sent)} of {human_size(update.total)})"
    if update.state in ("skipped", "failed"):
        return f"{update.state}: {shown(update.error or '')}"
    if update.state == "done" and update.result is not None:
        return "done: " + receipt_text(update.result)
    return {"connecting": "connecting...", "verifying": "the server checks it..."}.get(
        update.state, update.state
    )


def receipt_text(result: UploadResult) -> str:
    """What ``imgshare send`` says of a stored image."""
    return (
        f"stored as {result.id} ({human_size(result.size)}) at {iso(result.server_time_ms)}; "
        "signed receipt checked, server HMAC matches"
    )


def hmac_texts(result: UploadResult) -> tuple[str, str]:
    """The HMAC computed here, and the one the server signed in its receipt (the
    client checked they are equal; both are shown so that a person can compare them
    with the server's log, README.md)."""
    return result.hmac, result.receipt.body.hmac.hex()


def tile_text(tile: Tile, *, shared: bool) -> str:
    """A thumbnail's caption: name, owner (of an image shared with me), size, id."""
    entry = tile.entry
    owner = f"from {escape(entry.owner)}\n" if shared and entry.owner else ""
    return f"{escape(entry.name)}\n{owner}{human_size(entry.size)}, {tile.image_id[:8]}"


def shares_text(shares: Sequence[ShareInfo]) -> str:
    if not shares:
        return "not shared"
    until = [f"until {iso(share.expires_ms)}" if share.expires_ms else "no end" for share in shares]
    return "shared with " + ", ".join(
        f"{escape(share.username)} ({end})" for share, end in zip(shares, until, strict=True)
    )
