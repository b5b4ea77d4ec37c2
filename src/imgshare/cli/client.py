"""The image commands (`get`, `list`, `share`, `unshare`, `shares`, `delete`)
and how every client command reaches the server and logs in (`send` is in
``imgshare.cli.send``).

Where to connect and who to be come from the flags (or their ``IMGSHARE_*``
variables), else from the profile that `imgshare login` saved (``imgshare.client.
profile``; it is used only for its own server). How to log in, the first that
applies: a ``--client-cert`` with no password given (CERT_LOGIN); the token in
``IMGSHARE_TOKEN``; the profile's token, unless ``--password-file`` or another
``--user`` is given; else a password (``--password-file``, ``IMGSHARE_PASSWORD``, or
asked on a terminal, before connecting: the server waits 10 s for a login).

The trust material (the server's CA) comes from ``--ca`` or the profile, never from a
path relative to the current folder: `imgshare login --ca CA.pem` once, and every
command works from any folder. Failures to connect say why and what to do
(``imgshare.client.diagnose``)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from imgshare.client import diagnose
from imgshare.errors import ConfigError, ImgshareError, PeerError, StorageError
from imgshare.protocol.constants import DEFAULT_PORT, ErrorCode
from imgshare.safetext import escape
from imgshare.units import human_size

if TYPE_CHECKING:
    from imgshare.client import ClientSession
    from imgshare.client.profile import Profile
    from imgshare.protocol.events import ImageEntry

__all__ = ["human_size"]  # here for every command (`imgshare send` shows sizes too)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SERVER = f"localhost:{DEFAULT_PORT}"
LOGIN_COMMAND = "imgshare login --server HOST:PORT --ca CA.pem --user NAME"
#: What the server accepts (its image check, ``imgshare.server.images``).
ACCEPTED_FORMATS = "JPEG, PNG, GIF, WebP, TIFF and BMP"

#: The environment every client command reads, shown at the end of its --help.
ENVIRONMENT_HELP = """\b
Environment variables:
  IMGSHARE_SERVER           --server
  IMGSHARE_CA               --ca
  IMGSHARE_USER             --user
  IMGSHARE_CONNECT_TIMEOUT  --connect-timeout
  IMGSHARE_PASSWORD         your password (else --password-file, else a prompt)
  IMGSHARE_TOKEN            an API token to log in with (imgshare token create)
  IMGSHARE_CONFIG           the profile (imgshare login) [default:
                            ~/.config/imgshare/profile.json]"""


def connection_options(function: F) -> F:
    """The flags every client command shares."""
    options = [
        click.option(
            "--server",
            envvar="IMGSHARE_SERVER",
            show_envvar=True,
            metavar="HOST:PORT",
            help=f"The server: HOST:PORT, [IPv6]:PORT or https://HOST:PORT (port "
            f"{DEFAULT_PORT} if left out) [default: your profile's].",
        ),
        click.option(
            "--ca",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar="IMGSHARE_CA",
            show_envvar=True,
            metavar="CA.pem",
            help="The CA certificate that signed the server's: the ca.pem of its "
            "certificates (DATA/certs/ca.pem on the server) [default: the one your "
            "profile keeps].",
        ),
        click.option(
            "--user",
            "username",
            envvar="IMGSHARE_USER",
            show_envvar=True,
            metavar="NAME",
            help="Your user name [default: your profile's]. Another user than the "
            "profile's logs in with a password.",
        ),
        click.option(
            "--password-file",
            type=click.Path(path_type=Path, dir_okay=False),
            metavar="FILE",
            help="Log in with the password on this file's first line instead of the "
            "profile's token (without it: IMGSHARE_PASSWORD, else a prompt).",
        ),
        click.option(
            "--client-cert",
            type=click.Path(path_type=Path, dir_okay=False),
            metavar="FILE",
            help="Client certificate for mutual TLS; with no password given it also logs "
            "you in, as the user it names.",
        ),
        click.option(
            "--client-key",
            type=click.Path(path_type=Path, dir_okay=False),
            metavar="FILE",
            help="The client certificate's private key.",
        ),
        click.option(
            "--connect-timeout",
            type=click.FloatRange(min=0.1, max=3600),
            envvar="IMGSHARE_CONNECT_TIMEOUT",
            show_envvar=True,
            metavar="SECONDS",
            help="Give up when the server does not answer (to connect, to TLS, to the "
            f"imgshare handshake: each) within this long [default: "
            f"{diagnose.CONNECT_TIMEOUT:g}].",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def parse_server(server: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``HOST`` (default port), also as ``https://`` or
    ``imgshare://`` URLs -> (host, port). Raises ``ConfigError`` saying what is wrong."""
    return diagnose.parse_server(server)


server_text = diagnose.server_text


# --- who, where and how ------------------------------------------------------------------


@dataclass
class Login:
    """Where a command connects and how it logs in (see the module docstring)."""

    host: str
    port: int
    ca_file: Path | None  # the CA as a file, or
    ca_pem: str | None  # as the profile keeps it
    client_cert: Path | None
    client_key: Path | None
    method: str  # "token", "certificate", "password"
    username: str | None
    password_file: Path | None
    profile: Profile | None
    profile_path: Path
    connect_timeout: float | None = None  # None: diagnose.CONNECT_TIMEOUT
    token: str | None = field(default=None, repr=False)
    token_from_env: bool = False
    password: str | None = field(default=None, repr=False)  # once read

    @property
    def server(self) -> str:
        return server_text(self.host, self.port)

    @property
    def profile_token_used(self) -> bool:
        return self.method == "token" and not self.token_from_env

    def read_password(self, prompt: str = "Password") -> str:
        """The password (file, IMGSHARE_PASSWORD or a prompt), read once."""
        if self.password is None:
            self.password = read_password(self.password_file, prompt)
        return self.password

    def ca_pem_text(self) -> str:
        """The CA as PEM text, to keep in a profile. Raises ``ConfigError``."""
        if self.ca_pem is not None:
            return self.ca_pem
        assert self.ca_file is not None
        from imgshare import pki

        pki.load_certificate(self.ca_file)  # a clear error if it is not a certificate
        try:
            return self.ca_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the CA certificate {self.ca_file}") from exc


def read_password(password_file: Path | None, prompt: str = "Password") -> str:
    from imgshare.cli.users import read_password_file

    if password_file is not None:
        return read_password_file(password_file)
    from_env = os.environ.get("IMGSHARE_PASSWORD")
    if from_env is not None:
        return from_env
    _need_terminal()
    return str(click.prompt(prompt, hide_input=True, err=True))


def _need_terminal() -> None:
    """Raise ``ConfigError`` unless a password can be asked for on a terminal."""
    if not sys.stdin.isatty():
        raise ConfigError(
            "a password is needed and there is no terminal to ask on: give --password-file "
            "FILE or set IMGSHARE_PASSWORD (or log in once with `imgshare login`)"
        )


def _password_given(password_file: Path | None) -> bool:
    return password_file is not None or os.environ.get("IMGSHARE_PASSWORD") is not None


def load_profile(path: Path, *, needed: bool) -> Profile | None:
    """The profile, or None. A profile that cannot be used is an error when it is
    ``needed``; otherwise (the flags say everything) a warning."""
    from imgshare.client import profile

    try:
        return profile.load(path)
    except ConfigError as exc:
        if needed:
            raise
        click.echo(f"imgshare: warning: {escape(str(exc))}; going on with the flags", err=True)
        return None


def resolve_login(
    server: str | None,
    ca: Path | None,
    username: str | None,
    password_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    connect_timeout: float | None = None,
    *,
    method: str | None = None,
    token_first: bool = False,
) -> Login:
    """Work out where to connect and how to log in. ``method`` "password" (`imgshare
    login`) leaves out tokens, "none" (`imgshare register`) logging in; with
    ``token_first`` the profile's token logs in even when a password is given (it is
    for something else: `imgshare passwd`). Raises ``ConfigError`` saying what is
    missing and how to give it."""
    from imgshare.client import profile as profiles

    path = profiles.default_path()
    env_token = os.environ.get("IMGSHARE_TOKEN") if method is None else None
    who = username or client_cert or env_token or method == "none"
    flags_suffice = bool(server and ca and who)
    saved = load_profile(path, needed=not flags_suffice)
    host, port = parse_server(server or (saved.server if saved else DEFAULT_SERVER))
    same_server = saved is not None and parse_server(saved.server) == (host, port)
    profile = saved if same_server else None

    given = server or ca or username or client_cert or env_token
    if method is None and saved is None and not given:
        raise ConfigError(
            f"not logged in: run `{LOGIN_COMMAND}` once, or pass --server, --ca and --user"
        )
    ca_file, ca_pem = ca, None
    if ca_file is None:
        if profile is None:
            remember = f", or run `{LOGIN_COMMAND}` once to remember it" if method is None else ""
            raise ConfigError(
                "give --ca CA.pem: the ca.pem of the server's certificates (DATA/certs/ca.pem "
                f"on the server; its administrator can send it){remember}"
            )
        ca_pem = profile.ca_pem
    explicit_cert = client_cert is not None
    if not explicit_cert and client_key is None and profile is not None:
        client_cert = _path(profile.client_cert)
        client_key = _path(profile.client_key)

    login = Login(
        host, port, ca_file, ca_pem, client_cert, client_key, method or "password",
        username or (profile.user if profile else None), password_file, profile, path,
        connect_timeout,
    )  # fmt: skip
    if method == "none":
        return login
    password_given = _password_given(password_file)
    token_usable = (
        profile is not None
        and profile.token is not None
        and (username is None or username == profile.user)
    )
    if explicit_cert and not password_given:
        login.method = "certificate"
    elif method is not None:
        if not login.username:
            raise ConfigError("give --user NAME (or set IMGSHARE_USER)")
    elif env_token:
        login.method, login.token, login.token_from_env = "token", env_token, True
    elif token_usable and (password_file is None or token_first):
        assert profile is not None
        login.method, login.token = "token", profile.token
        _check_not_expired(profile, path)
    elif not login.username or not (username or password_given):
        raise ConfigError(_not_logged_in(saved, login))
    return login


def _not_logged_in(saved: Profile | None, login: Login) -> str:
    if saved is not None and login.profile is not None:
        return (
            f"not logged in as {saved.user} on {saved.server} (you logged out): run "
            "`imgshare login` to log in again, or pass --password-file"
        )
    if saved is not None:
        return (
            f"you are logged in to {saved.server}, not {login.server}: run "
            f"`imgshare login --server {login.server} --ca CA.pem --user NAME`, "
            "or pass --user NAME"
        )
    return f"not logged in: run `{LOGIN_COMMAND}` once, or pass --user NAME"


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


def _check_not_expired(profile: Profile, path: Path) -> None:
    if profile.token_expires_ms and profile.token_expires_ms <= time.time() * 1000:
        raise ConfigError(
            f"your login as {profile.user} on {profile.server} expired at "
            f"{iso(profile.token_expires_ms)} (token in {path}): run `imgshare login` again"
        )


def connect(login: Login, *, token: str | None = None) -> ClientSession:
    """TLS, then the application handshake, checking the server against the CA at both
    layers; with ``token``, also log in with it in the same flight. Raises
    ``TransportError`` (saying why, and what to do), ``HandshakeError``,
    ``CertificateError``, and with ``token`` what ``token_login`` raises."""
    from imgshare import pki, tls
    from imgshare.client import ClientSession, ca_verifier
    from imgshare.client.profile import Profile

    if login.ca_file is not None:
        context = tls.create_client_context(
            login.ca_file, client_cert=login.client_cert, client_key=login.client_key
        )
        anchors = [pki.load_certificate(login.ca_file)]
        source = f"--ca {login.ca_file}"
    else:
        assert login.ca_pem is not None
        context = tls.create_client_context(
            cadata=login.ca_pem, client_cert=login.client_cert, client_key=login.client_key
        )
        anchors = Profile(login.server, login.ca_pem, "").ca_certificates()
        source = f"the CA saved in your profile ({login.profile_path})"
    setup = diagnose.Setup(
        ca_source=source,
        ca_file=login.ca_file,
        ca_pem=login.ca_pem,
        client_cert=str(login.client_cert) if login.client_cert else None,
    )
    return ClientSession.connect(
        login.host,
        login.port,
        context,
        verifier=ca_verifier(anchors, login.host),
        token=token,
        connect_timeout=login.connect_timeout,
        setup=setup,
    )


def log_in(session: ClientSession, login: Login) -> str:
    """Log ``session`` in as ``login`` says; return the user name. Raises
    ``ImgshareError`` with what to do when the server says no."""
    try:
        if login.method == "token":
            assert login.token is not None
            name = session.token_login(login.token)
        elif login.method == "certificate":
            name = session.cert_login()
        else:
            assert login.username is not None
            name = session.login(login.username, login.read_password())
    except PeerError as exc:
        if exc.code != ErrorCode.AUTH_FAILED:
            raise
        raise _login_refused(exc, login) from exc
    if login.username and name != login.username and login.method == "certificate":
        raise ConfigError(
            f"your client certificate logs in as {name}, not {login.username}: drop --user, "
            "or give --password-file to log in as someone else"
        )
    return name


def _login_refused(exc: PeerError, login: Login) -> ImgshareError:
    if login.token_from_env:
        return PeerError(
            f"{exc}: the token in IMGSHARE_TOKEN was refused (unknown, revoked or expired); "
            "make a new one with `imgshare token create`",
            exc.code,
        )
    if login.method == "token":
        return PeerError(
            f"{exc}: your saved login as {login.username} on {login.server} no longer "
            f"works (its token was revoked or has expired): run `imgshare login` again",
            exc.code,
        )
    if login.method == "certificate":
        return PeerError(
            f"{exc}: the client certificate {login.client_cert} does not log you in; "
            "give --user NAME and --password-file to log in with a password",
            exc.code,
        )
    return exc


def open_session(
    server: str | None,
    ca: Path | None,
    username: str | None,
    password_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    connect_timeout: float | None = None,
) -> ClientSession:
    """Connect and log in (see the module docstring for how)."""
    login = resolve_login(
        server, ca, username, password_file, client_cert, client_key, connect_timeout
    )
    return open_login(login)


def open_login(login: Login) -> ClientSession:
    """Connect and log in as ``login`` says. A password is read first: the server
    gives a connection 10 s to log in, and people type slower than that. A token
    goes in the same flight as the handshake's end (one round trip fewer)."""
    if login.method == "token":
        assert login.token is not None
        try:
            return connect(login, token=login.token)
        except PeerError as exc:
            if exc.code != ErrorCode.AUTH_FAILED:
                raise
            raise _login_refused(exc, login) from exc
    if login.method == "password":
        login.read_password()
    session = connect(login)
    try:
        log_in(session, login)
    except BaseException:
        session.close()
        raise
    return session


@contextmanager
def explained(action: str, *hints: tuple[ErrorCode, str]) -> Iterator[None]:
    """Turn a refusal of the server into "ACTION: server: WHY (WHAT TO DO)"."""
    try:
        yield
    except PeerError as exc:
        hint = dict(hints).get(exc.code) or _HINTS.get(exc.code)
        message = f"{action}: {exc}" + (f" ({hint})" if hint else "")
        raise PeerError(message, exc.code, exc.retry_after) from exc


#: What to do about a refusal, when the command has nothing more precise to say.
_HINTS = {ErrorCode.NOT_AN_IMAGE: f"imgshare accepts {ACCEPTED_FORMATS} images"}


def refusal(exc: PeerError) -> str:
    """A refusal of the server as a person reads it: its message, and for a format
    the server does not take, the formats it does."""
    hint = _HINTS.get(exc.code)
    return f"{exc} ({hint})" if hint and hint not in str(exc) else str(exc)


_NO_IMAGE_OF_YOURS = (
    ErrorCode.NOT_FOUND,
    "check the id with `imgshare list`: only your own images are yours to change",
)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def until(expires_ms: int, forever: str) -> str:
    return f"until {iso(expires_ms)}" if expires_ms else forever


# --- image ids -------------------------------------------------------------------------------

#: The shortest id prefix a command takes: 8 hex digits leave 1 in 4 billion to chance.
MIN_PREFIX = 8
ID_DIGITS = 32


def id_text(text: str) -> str:
    """An image id or a prefix of one, as typed: checked and lower-cased before anything
    connects. Raises ``ConfigError`` saying what an id looks like."""
    cleaned = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", cleaned) or len(cleaned) > ID_DIGITS:
        raise ConfigError(
            f"{escape(text)!r} is not an image id: ids are {ID_DIGITS} hex digits, and the "
            f"first {MIN_PREFIX} or more will do (see `imgshare list`)"
        )
    if len(cleaned) < MIN_PREFIX:
        raise ConfigError(
            f"{cleaned!r} is too short: give at least {MIN_PREFIX} hex digits of the id "
            "(see `imgshare list`)"
        )
    return cleaned


def resolve_ids(
    session: ClientSession, texts: Sequence[str], *, own_only: bool
) -> list[tuple[str, ImageEntry | None]]:
    """Full ids for ids or unique prefixes (from ``id_text``), with their list entries
    when a prefix had to be looked up. Prefixes are looked up among your images and
    those shared with you (``own_only``: a match that is not yours is an error).
    Raises ``ConfigError`` for a prefix that matches nothing, or several images (listed)."""
    from imgshare.protocol.constants import ListScope

    if all(len(text) == ID_DIGITS for text in texts):
        return [(text, None) for text in texts]
    own = list(session.iter_images(ListScope.OWN))
    shared = list(session.iter_images(ListScope.SHARED_WITH_ME))
    resolved: list[tuple[str, ImageEntry | None]] = []
    for text in texts:
        if len(text) == ID_DIGITS:
            resolved.append((text, None))
            continue
        mine = [entry for entry in own if entry.image_id.hex().startswith(text)]
        others = [entry for entry in shared if entry.image_id.hex().startswith(text)]
        found = mine if own_only else mine + others
        if len(found) == 1:
            resolved.append((found[0].image_id.hex(), found[0]))
            continue
        if not found and own_only and others:
            owners = ", ".join(sorted({escape(entry.owner) for entry in others}))
            raise ConfigError(
                f"{text} is an image {owners} shared with you, not yours: only its owner "
                "can do that"
            )
        if not found:
            where = "of yours" if own_only else "of yours or shared with you"
            raise ConfigError(
                f"no image {where} has an id starting with {text} (see `imgshare list`"
                + ("" if own_only else " and `imgshare list --shared-with-me`")
                + ")"
            )
        lines = [f"{text} matches {len(found)} images: give more digits of the id"]
        lines += [f"  {_entry_line(entry, with_owner=not own_only)}" for entry in found[:20]]
        if len(found) > 20:
            lines.append(f"  ... and {len(found) - 20} more")
        raise ConfigError("\n".join(lines))
    return resolved


def _entry_line(entry: ImageEntry, *, with_owner: bool) -> str:
    owner = f"{escape(entry.owner):<16}  " if with_owner else ""
    return (
        f"{entry.image_id.hex()}  {human_size(entry.size):>9}  {iso(entry.created_ms)}  "
        f"{owner}{escape(entry.name)}"
    )


def resolve_one(session: ClientSession, text: str, *, own_only: bool = True) -> str:
    """The full id of one id or unique prefix (see ``resolve_ids``)."""
    return resolve_ids(session, [text], own_only=own_only)[0][0]


# --- get ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Output:
    """Where `get` writes: one file, a folder, or standard output."""

    kind: str  # "file", "folder", "stdout"
    path: Path  # the file or folder (for stdout: unused)
    shown: str  # as the user gave it, for messages


def _output(output: str | None, count: int, force: bool) -> _Output:
    """Check ``-o`` before connecting: the shape fits the ids, the place is writable.
    Raises ``ConfigError`` naming the path as given."""
    if output == "-":
        if count != 1:
            raise ConfigError("-o - writes one image to standard output: give one ID")
        return _Output("stdout", Path("-"), "standard output")
    if output is None:
        folder = Path(".")
        _check_writable(folder, "the current folder")
        return _Output("folder", folder, "the current folder")
    path = Path(output).expanduser()
    if path.is_dir():
        _check_writable(path, output)
        return _Output("folder", path, output)
    if output.endswith(("/", os.sep)):
        raise ConfigError(f"cannot write to {escape(output)}: there is no such folder")
    if count != 1:
        raise ConfigError(
            f"-o {escape(output)} is a file, and {count} images cannot all go there: give "
            "a folder (it must exist) or one ID"
        )
    if path.exists() and not force:
        raise ConfigError(f"{escape(output)} exists (use --force to overwrite it)")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(
            f"cannot write {escape(output)}: there is no folder {escape(str(parent))}"
        )
    _check_writable(parent, output)
    return _Output("file", path, output)


def _check_writable(folder: Path, shown: str) -> None:
    """Make and drop a file in ``folder``: the one test that holds for every user,
    root included, and every file system."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write {escape(shown)}: {exc.strerror or exc}") from None


def _unique(folder: Path, name: str) -> Path:
    """``name`` in ``folder``, or ``stem-1.ext``, ``stem-2.ext``... if that is taken."""
    candidate = folder / name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    number = 1
    while candidate.exists() or candidate.is_symlink():
        candidate = folder / (f"{stem}-{number}.{suffix}" if suffix else f"{stem}-{number}")
        number += 1
    return candidate


def _place(fetched: Path, folder: Path, force: bool) -> Path:
    """Move a verified download from our temp folder into ``folder`` under its name:
    a taken name gets a number (or, with ``force``, is replaced). Never overwrites a
    file that appeared meanwhile unless ``force``."""
    if force:
        final = folder / fetched.name
        os.replace(fetched, final)
        return final
    while True:
        final = _unique(folder, fetched.name)
        try:
            os.link(fetched, final)  # fails if the name was taken meanwhile
        except FileExistsError:
            continue
        fetched.unlink()
        return final


@click.command(short_help="Fetch images (or --thumbnail) by id, checked end to end.")
@click.argument("image_ids", metavar="ID...", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    metavar="FILE|DIR|-",
    help="Where to write: a FILE (one ID), a folder DIR (each image under the name it was "
    "sent with, made safe; a taken name gets a number), or - for standard output (one "
    "ID; the messages then go to standard error) [default: the current folder].",
)
@click.option(
    "--force", is_flag=True, help="Overwrite existing files instead of numbering or refusing."
)
@click.option(
    "--thumbnail",
    "-t",
    is_flag=True,
    help="Fetch each image's thumbnail instead: at most 256 pixels on its long side, no "
    "metadata, JPEG (PNG when transparent), made by the server when it stored the image. "
    "In a folder it is named ID.thumb.jpg (or .png).",
)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def get(
    image_ids: tuple[str, ...],
    output: str | None,
    force: bool,
    thumbnail: bool,
    as_json: bool,
    **connection: Any,
) -> None:
    """Fetch images ID... (yours, or shared with you), check every chunk and the
    uploader's HMAC, then write them; with --thumbnail, their thumbnails.

    ID is an image id (32 hex digits) or a unique start of one (8 or more: `imgshare
    list` shows them). Nothing is written until an image has checked out completely.
    """
    import tempfile

    ids = [id_text(text) for text in image_ids]
    where = _output(output, len(ids), force)
    out = sys.stderr if where.kind == "stdout" else sys.stdout
    login = resolve_login(**connection)
    not_found = (
        ErrorCode.NOT_FOUND,
        "no such id, or not shared with you: see `imgshare list` and "
        "`imgshare list --shared-with-me`",
    )
    failures = 0
    session = open_login(login)
    try:
        targets = resolve_ids(session, ids, own_only=False)
        for image_id, _ in targets:
            try:
                if thumbnail:
                    with explained(f"cannot get the thumbnail of {image_id}", not_found):
                        thumb, path = _save_thumbnail(session, image_id, where, force)
                    _print_thumbnail(thumb, image_id, path, as_json, out)
                    continue
                # Folders and standard output: fetched into a temp folder first (beside
                # the destination, so the move is a rename), then placed.
                if where.kind == "file":
                    with explained(f"cannot get {image_id}", not_found):
                        result = _download(session, image_id, where, where.path, force)
                    path = result.path
                else:
                    base = where.path if where.kind == "folder" else None
                    with tempfile.TemporaryDirectory(dir=base, prefix=".imgshare-get-") as tmp:
                        with explained(f"cannot get {image_id}", not_found):
                            result = _download(session, image_id, where, Path(tmp), force)
                        if where.kind == "stdout":
                            _to_stdout(result.path)
                            path = None
                        else:
                            path = _place(result.path, where.path, force)
            except PeerError as exc:
                if len(targets) == 1:
                    raise
                failures += 1
                click.echo(f"imgshare: error: {escape(str(exc))}", err=True)
                continue
            except ImgshareError as exc:
                if len(targets) == 1:
                    raise
                failures += 1
                click.echo(f"imgshare: error: {image_id}: {escape(str(exc))}", err=True)
                session.close()
                session = open_login(login)  # the connection may be unusable
                continue
            _print_download(result, path, as_json, out)
    finally:
        session.close()
    if failures:
        raise ImgshareError(f"{failures} of {len(ids)} image(s) not fetched")


def _download(
    session: ClientSession, image_id: str, where: _Output, target: Path, force: bool
) -> Any:
    """One download to ``target`` (a file, or a temp folder); a local failure to write
    names the place the user chose, never our temp file."""
    try:
        if where.kind == "file":
            return session.download(image_id, target, overwrite=force)
        return session.download(image_id, folder=target, overwrite=True)
    except StorageError as exc:
        cause = exc.__cause__
        why = getattr(cause, "strerror", None) or "cannot write there"
        raise ImgshareError(f"cannot write {escape(where.shown)}: {why}") from exc


#: What a thumbnail may be (docs/protocol.md, 7.11), its file extension and first bytes.
_THUMBNAIL_TYPES = {"image/jpeg": ("jpg", b"\xff\xd8\xff"), "image/png": ("png", b"\x89PNG\r\n")}


def _save_thumbnail(
    session: ClientSession, image_id: str, where: _Output, force: bool
) -> tuple[Any, Path | None]:
    """Fetch one thumbnail (THUMBNAIL) and write it where ``-o`` says: complete or not
    at all, a folder's taken name numbered unless ``force``. Returns the answer and
    the path written (None for standard output). Its bytes are untrusted: they must at
    least be the kind of file the server says (the CLI does not decode them)."""
    import tempfile

    thumb = session.thumbnail_data(image_id)
    kind = _THUMBNAIL_TYPES.get(thumb.media_type)
    if kind is None or not thumb.data.startswith(kind[1]):
        raise ImgshareError(f"the server's thumbnail of {image_id} is not a JPEG or PNG file")
    if where.kind == "stdout":
        sys.stdout.buffer.write(thumb.data)
        sys.stdout.buffer.flush()
        return thumb, None
    folder = where.path if where.kind == "folder" else where.path.parent
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".imgshare-get-") as tmp:
            fetched = Path(tmp) / f"{image_id}.thumb.{kind[0]}"
            with fetched.open("wb") as handle:
                handle.write(thumb.data)
                handle.flush()
                os.fsync(handle.fileno())
            if where.kind == "folder":
                return thumb, _place(fetched, where.path, force)
            if force:
                os.replace(fetched, where.path)
            else:
                os.link(fetched, where.path)  # never over a file that appeared meanwhile
            return thumb, where.path
    except FileExistsError:
        raise ImgshareError(f"{escape(where.shown)} exists (use --force to overwrite it)") from None
    except OSError as exc:
        raise ImgshareError(f"cannot write {escape(where.shown)}: {exc.strerror or exc}") from exc


def _print_thumbnail(thumb: Any, image_id: str, path: Path | None, as_json: bool, out: Any) -> None:
    if as_json:
        record = {
            "id": image_id,
            "thumbnail": True,
            "width": thumb.width,
            "height": thumb.height,
            "media_type": thumb.media_type,
            "size": len(thumb.data),
            "path": None if path is None else str(path),
        }
        click.echo(json.dumps(record), file=out)
        return
    shown = "standard output" if path is None else str(path)
    click.echo(
        f"{escape(shown)}: thumbnail of {image_id}, {thumb.width}x{thumb.height} "
        f"{thumb.media_type}, {human_size(len(thumb.data))}",
        file=out,
    )


def _to_stdout(path: Path) -> None:
    import shutil

    stream = sys.stdout.buffer
    with path.open("rb") as source:
        shutil.copyfileobj(source, stream, 1024 * 1024)
    stream.flush()


def _print_download(result: Any, path: Path | None, as_json: bool, out: Any) -> None:
    shown = "standard output" if path is None else str(path)
    if as_json:
        record = {
            "id": result.id,
            "name": result.name,
            "size": result.size,
            "sha256": result.sha256,
            "hmac": result.hmac,
            "path": None if path is None else str(path),
        }
        click.echo(json.dumps(record), file=out)
        return
    click.echo(f"HMAC of image on client side: {result.hmac}", file=out)
    click.echo(
        f"{escape(shown)}: {escape(result.name)}, {human_size(result.size)}, sha256 "
        f"{result.sha256}, HMAC verified",
        file=out,
    )


# --- list --------------------------------------------------------------------------------


@click.command("list", short_help="List your images, or those shared with you.")
@click.option(
    "--shared-with-me",
    is_flag=True,
    help="List the images others shared with you (with their owner) instead of yours.",
)
@connection_options
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per image (size in bytes)."
)
def list_images(shared_with_me: bool, as_json: bool, **connection: Any) -> None:
    """List your images on the server (all of them, oldest first), or with
    --shared-with-me those others shared with you.

    Each line: id, size, when it was stored (UTC), (owner,) name. The first 8 digits
    of an id are enough for `imgshare get`, `share` and the others, when unique.
    """
    from imgshare.protocol.constants import ListScope

    scope = ListScope.SHARED_WITH_ME if shared_with_me else ListScope.OWN
    listed = False
    lines: list[str] = []
    with open_session(**connection) as session:
        for entry in session.iter_images(scope):
            listed = True
            if as_json:
                record = {
                    "id": entry.image_id.hex(),
                    "name": entry.name,
                    "size": entry.size,
                    "owner": entry.owner,
                    "created": iso(entry.created_ms),
                    "hmac": entry.hmac.hex(),
                }
                lines.append(json.dumps(record))
            else:
                lines.append(_entry_line(entry, with_owner=shared_with_me))
            if len(lines) >= 256:
                click.echo("\n".join(lines))
                lines.clear()
    if lines:
        click.echo("\n".join(lines))
    if not listed and not as_json:
        if shared_with_me:
            click.echo("no images are shared with you", err=True)
        else:
            click.echo("you have no images yet (send one with `imgshare send FILE`)", err=True)


# --- sharing and deleting ----------------------------------------------------------------


def _expires_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--expires",
        metavar="DURATION",
        help=f"{what} after this long: 90s, 30m, 12h, 7d, 2w [default: never].",
    )


def expiry(duration: str | None) -> int:
    """``--expires DURATION`` as ms since the epoch (0: never). Raises ``ConfigError``."""
    from imgshare.client.duration import expires_at, parse_duration

    if duration is None:
        return 0
    try:
        return expires_at(parse_duration(duration))
    except ConfigError as exc:
        raise ConfigError(f"--expires: {exc}") from None


@click.command(short_help="Let another user fetch one of your images.")
@click.argument("image_id", metavar="ID")
@click.option("--with", "recipient", required=True, metavar="USER", help="Who may see it.")
@_expires_option("The share ends")
@connection_options
def share(image_id: str, recipient: str, expires: str | None, **connection: Any) -> None:
    """Let USER fetch your image ID (`imgshare get`), end to end: the server re-wraps
    its key for them and they check your HMAC. Sharing again with the same USER sets
    a new expiry.

    \b
    ID is an image id or a unique start of one (8 or more hex digits).
    """
    prefix = id_text(image_id)
    expires_ms = expiry(expires)
    no_such = (
        ErrorCode.NOT_FOUND,
        "check the user name, and the image id with `imgshare list`: only your own "
        "images can be shared",
    )
    with open_session(**connection) as session:
        full = resolve_one(session, prefix)
        with explained(f"cannot share {full} with {escape(recipient)}", no_such):
            session.share(full, recipient, expires_ms)
    click.echo(
        f"shared {full} with {escape(recipient)} {until(expires_ms, 'until you unshare it')}"
    )


@click.command(short_help="Stop sharing one of your images with a user.")
@click.argument("image_id", metavar="ID")
@click.option("--with", "recipient", required=True, metavar="USER", help="Who may no longer.")
@connection_options
def unshare(image_id: str, recipient: str, **connection: Any) -> None:
    """Stop sharing your image ID with USER; it stops working at once.

    \b
    ID is an image id or a unique start of one (8 or more hex digits).
    """
    prefix = id_text(image_id)
    with open_session(**connection) as session:
        full = resolve_one(session, prefix)
        hint = (ErrorCode.NOT_FOUND, f"see who can see it with `imgshare shares {full}`")
        with explained(f"cannot unshare {full} with {escape(recipient)}", hint):
            session.unshare(full, recipient)
    click.echo(f"{full} is no longer shared with {escape(recipient)}")


@click.command(short_help="Show who can see one of your images.")
@click.argument("image_id", metavar="ID")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per share.")
def shares(image_id: str, as_json: bool, **connection: Any) -> None:
    """Show who can see your image ID, since when and until when.

    \b
    ID is an image id or a unique start of one (8 or more hex digits).
    """
    prefix = id_text(image_id)
    with open_session(**connection) as session:
        full = resolve_one(session, prefix)
        with explained(f"cannot list the shares of {full}", _NO_IMAGE_OF_YOURS):
            found = session.shares(full)
    for item in found:
        if as_json:
            record = {
                "user": item.username,
                "granted": iso(item.granted_ms),
                "expires": iso(item.expires_ms) if item.expires_ms else None,
            }
            click.echo(json.dumps(record))
        else:
            click.echo(
                f"{escape(item.username):<16}  since {iso(item.granted_ms)}  "
                f"{until(item.expires_ms, 'until unshared')}"
            )
    if not found and not as_json:
        click.echo(f"{full} is shared with nobody", err=True)


@click.command(short_help="Delete one of your images for good.")
@click.argument("image_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@connection_options
def delete(image_id: str, yes: bool, **connection: Any) -> None:
    """Delete your image ID for good: its key is destroyed first, then the stored
    image, its inbox copy and every share. There is no undo.

    \b
    ID is an image id or a unique start of one (8 or more hex digits).
    """
    prefix = id_text(image_id)
    if not yes and not sys.stdin.isatty():
        raise ConfigError(f"delete asks before it deletes: pass --yes to delete {prefix}")
    login = resolve_login(**connection)
    full, name = prefix, ""
    if len(prefix) < ID_DIGITS:
        # Look the prefix up first; the question is asked with no connection open (a
        # person may take longer to answer than the server waits).
        with open_login(login) as session:
            ((full, entry),) = resolve_ids(session, [prefix], own_only=True)
        name = f" ({escape(entry.name)})" if entry is not None else ""
    if not yes and not click.confirm(f"Delete image {full}{name} for good?", err=True):
        click.echo("nothing deleted", err=True)
        return
    with open_login(login) as session:
        with explained(f"cannot delete {full}", _NO_IMAGE_OF_YOURS):
            session.delete(full)
    click.echo(f"deleted {full}{name}")
