"""The image commands (`send`, `get`, `list`, `share`, `unshare`, `shares`, `delete`)
and how every client command reaches the server and logs in.

Where to connect and who to be come from the flags (or their ``IMGSHARE_*``
variables), else from the profile that `imgshare login` saved (``imgshare.client.
profile``; it is used only for its own server). How to log in, the first that
applies: a ``--client-cert`` with no password given (CERT_LOGIN); the token in
``IMGSHARE_TOKEN``; the profile's token, unless ``--password-file`` or another
``--user`` is given; else a password (``--password-file``, ``IMGSHARE_PASSWORD``, or
asked on a terminal, before connecting: the server waits 10 s for a login)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from imgshare.errors import ConfigError, ImgshareError, PeerError, TransportError
from imgshare.protocol.constants import DEFAULT_PORT, ErrorCode
from imgshare.safetext import escape

if TYPE_CHECKING:
    from imgshare.client import ClientSession
    from imgshare.client.profile import Profile

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CA = Path("data/certs/ca.pem")
DEFAULT_SERVER = f"localhost:{DEFAULT_PORT}"
LOGIN_COMMAND = "imgshare login --server HOST:PORT --ca CA.pem --user NAME"


def connection_options(function: F) -> F:
    """The flags every client command shares."""
    options = [
        click.option(
            "--server",
            envvar="IMGSHARE_SERVER",
            help=f"HOST:PORT of the server ([::1]:PORT for IPv6) [default: your profile's, "
            f"else {DEFAULT_SERVER}].",
        ),
        click.option(
            "--ca",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar="IMGSHARE_CA",
            help="CA certificate that signed the server's [default: your profile's, else "
            f"{DEFAULT_CA} if it exists].",
        ),
        click.option(
            "--user",
            "username",
            envvar="IMGSHARE_USER",
            help="Your user name [default: your profile's]. Another user than the "
            "profile's logs in with a password.",
        ),
        click.option(
            "--password-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Log in with the password on this file's first line instead of the "
            "profile's token (without it: IMGSHARE_PASSWORD, else a prompt).",
        ),
        click.option(
            "--client-cert",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Client certificate for mutual TLS; with no password given it also logs "
            "you in, as the user it names.",
        ),
        click.option(
            "--client-key", type=click.Path(path_type=Path, dir_okay=False), help="Its private key."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def parse_server(server: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` (default port) -> (host, port)."""
    host, sep, port_text = server.rpartition(":")
    if not sep or host.endswith(":") or (":" in host and not host.startswith("[")):
        host, port_text = server, str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--server {server!r}: the port must be a number") from None
    if not host or not 0 < port < 65536:
        raise ConfigError(f"--server {server!r} is not HOST:PORT")
    return host.strip("[]"), port


def server_text(host: str, port: int) -> str:
    """The HOST:PORT form of an address, brackets around IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        if profile is not None:
            ca_pem = profile.ca_pem
        elif DEFAULT_CA.exists():
            ca_file = DEFAULT_CA
        else:
            remember = f", or run `{LOGIN_COMMAND}` once to remember it" if method is None else ""
            raise ConfigError(
                f"give --ca CA.pem (the ca.pem of the server's certificates){remember}"
            )
    explicit_cert = client_cert is not None
    if not explicit_cert and client_key is None and profile is not None:
        client_cert = _path(profile.client_cert)
        client_key = _path(profile.client_key)

    login = Login(
        host, port, ca_file, ca_pem, client_cert, client_key, method or "password",
        username or (profile.user if profile else None), password_file, profile, path,
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
    from imgshare.store.catalog import now_ms

    if profile.token_expires_ms and profile.token_expires_ms <= now_ms():
        raise ConfigError(
            f"your login as {profile.user} on {profile.server} expired at "
            f"{iso(profile.token_expires_ms)} (token in {path}): run `imgshare login` again"
        )


def connect(login: Login) -> ClientSession:
    """TLS, then the application handshake, checking the server against the CA at both
    layers. Raises ``TransportError``, ``HandshakeError``, ``CertificateError``."""
    from imgshare import pki, tls
    from imgshare.client import ClientSession, ca_verifier
    from imgshare.client.profile import Profile

    if login.ca_file is not None:
        context = tls.create_client_context(
            login.ca_file, client_cert=login.client_cert, client_key=login.client_key
        )
        anchors = [pki.load_certificate(login.ca_file)]
    else:
        assert login.ca_pem is not None
        context = tls.create_client_context(
            cadata=login.ca_pem, client_cert=login.client_cert, client_key=login.client_key
        )
        anchors = Profile(login.server, login.ca_pem, "").ca_certificates()
    verifier = ca_verifier(anchors, login.host)
    try:
        return ClientSession.connect(login.host, login.port, context, verifier=verifier)
    except TransportError as exc:
        raise _transport_error(exc, login) from exc


#: The TLS alerts a server sends when it refuses our client certificate, or its lack.
_CERTIFICATE_ALERT = re.compile(
    r"\b\w*ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN)\b"
)


def _transport_error(exc: TransportError, login: Login) -> ImgshareError:
    """Name the likely cause of a TLS refusal: our client certificate, or its lack."""
    alert = _CERTIFICATE_ALERT.search(str(exc))
    if alert is None:
        return exc
    refused = f"{login.server} refused the TLS connection ({alert.group(0)})"
    if login.client_cert is None:
        return TransportError(
            f"{refused}: it wants a client certificate; give --client-cert and "
            "--client-key (its administrator makes them: `imgshare certs client NAME`)"
        )
    return TransportError(
        f"{refused}: it does not accept the client certificate {login.client_cert}, "
        "which must be issued by the CA it trusts for clients"
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
) -> ClientSession:
    """Connect and log in (see the module docstring for how)."""
    login = resolve_login(server, ca, username, password_file, client_cert, client_key)
    return open_login(login)


def open_login(login: Login) -> ClientSession:
    """Connect and log in as ``login`` says. A password is read first: the server
    gives a connection 10 s to log in, and people type slower than that."""
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
        hint = dict(hints).get(exc.code)
        message = f"{action}: {exc}" + (f" ({hint})" if hint else "")
        raise PeerError(message, exc.code, exc.retry_after) from exc


_NO_IMAGE_OF_YOURS = (
    ErrorCode.NOT_FOUND,
    "check the id with `imgshare list`: only your own images are yours to change",
)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def until(expires_ms: int, forever: str) -> str:
    return f"until {iso(expires_ms)}" if expires_ms else forever


# --- the image commands -------------------------------------------------------------------


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def send(files: tuple[Path, ...], as_json: bool, **connection: Any) -> None:
    """Send image FILES to the server, end-to-end encrypted; print each receipt.

    For each image it prints the HMAC it computed ("HMAC of image on client side")
    and the server's signed receipt, whose HMAC must match (it is checked).
    """
    login = resolve_login(**connection)
    session = open_login(login)
    failures = 0
    try:
        for path in files:
            try:
                result = session.upload(path, sha256=True)
            except PeerError as exc:
                failures += 1
                click.echo(f"imgshare: error: {escape(str(path))}: {exc}", err=True)
                continue
            except ImgshareError as exc:
                failures += 1
                click.echo(f"imgshare: error: {escape(str(path))}: {exc}", err=True)
                session.close()
                session = open_login(login)  # the connection may be unusable
                continue
            _print_upload(path, result, as_json)
    finally:
        session.close()
    if failures:
        raise ImgshareError(f"{failures} of {len(files)} image(s) not sent")


def _print_upload(path: Path, result: Any, as_json: bool) -> None:
    if as_json:
        record = {
            "file": str(path),
            "id": result.id,
            "name": result.name,
            "size": result.size,
            "sha256": result.sha256,
            "hmac": result.hmac,
            "server_time": iso(result.server_time_ms),
            "receipt_signature": result.receipt.signature.hex(),
        }
        click.echo(json.dumps(record))
        return
    click.echo(f"HMAC of image on client side: {result.hmac}")
    click.echo(
        f"{escape(str(path))}: stored as {result.id} ({result.size} bytes, sha256 "
        f"{result.sha256}) at {iso(result.server_time_ms)}; signed receipt checked, "
        "server HMAC matches"
    )


@click.command()
@click.argument("image_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the image [default: the name it was sent with, in this folder].",
)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def get(image_id: str, output: Path | None, force: bool, as_json: bool, **connection: Any) -> None:
    """Download image IMAGE_ID (yours, or one shared with you), check every chunk and
    the uploader's HMAC, then write it."""
    not_found = (
        ErrorCode.NOT_FOUND,
        "no such id, or not shared with you: see `imgshare list` and "
        "`imgshare list --shared-with-me`",
    )
    with open_session(**connection) as session, explained(f"cannot get {image_id}", not_found):
        result = session.download(image_id, output, overwrite=force)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": result.id,
                    "name": result.name,
                    "size": result.size,
                    "sha256": result.sha256,
                    "hmac": result.hmac,
                    "path": str(result.path),
                }
            )
        )
    else:
        click.echo(f"HMAC of image on client side: {result.hmac}")
        click.echo(
            f"{escape(str(result.path))}: {result.size} bytes, sha256 {result.sha256}, "
            "HMAC verified"
        )


@click.command("list")
@click.option(
    "--shared-with-me",
    is_flag=True,
    help="List the images others shared with you (with their owner) instead of yours.",
)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def list_images(shared_with_me: bool, as_json: bool, **connection: Any) -> None:
    """List your images on the server (all of them, oldest first), or with
    --shared-with-me those others shared with you.

    Each line: id, size in bytes, when it was stored, (owner,) name.
    """
    from imgshare.protocol.constants import ListScope

    scope = ListScope.SHARED_WITH_ME if shared_with_me else ListScope.OWN
    listed = False
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
                click.echo(json.dumps(record))
                continue
            owner = f"{escape(entry.owner):<16}  " if shared_with_me else ""
            click.echo(
                f"{entry.image_id.hex()}  {entry.size:>12}  {iso(entry.created_ms)}  "
                f"{owner}{escape(entry.name)}"
            )
    if not listed and not as_json:
        if shared_with_me:
            click.echo("no images are shared with you", err=True)
        else:
            click.echo("you have no images yet (send one with `imgshare send FILE`)", err=True)


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


@click.command()
@click.argument("image_id")
@click.option("--with", "recipient", required=True, metavar="USER", help="Who may see it.")
@_expires_option("The share ends")
@connection_options
def share(image_id: str, recipient: str, expires: str | None, **connection: Any) -> None:
    """Let USER fetch your image IMAGE_ID (`imgshare get`), end to end: the server
    re-wraps its key for them and they check your HMAC. Sharing again with the same
    USER sets a new expiry."""
    expires_ms = expiry(expires)
    no_such = (
        ErrorCode.NOT_FOUND,
        "check the user name, and the image id with `imgshare list`: only your own "
        "images can be shared",
    )
    with open_session(**connection) as session:
        with explained(f"cannot share {image_id} with {recipient}", no_such):
            session.share(image_id, recipient, expires_ms)
    click.echo(
        f"shared {image_id.lower()} with {escape(recipient)} "
        f"{until(expires_ms, 'until you unshare it')}"
    )


@click.command()
@click.argument("image_id")
@click.option("--with", "recipient", required=True, metavar="USER", help="Who may no longer.")
@connection_options
def unshare(image_id: str, recipient: str, **connection: Any) -> None:
    """Stop sharing your image IMAGE_ID with USER; it stops working at once."""
    hint = (ErrorCode.NOT_FOUND, f"see who can see it with `imgshare shares {image_id}`")
    with open_session(**connection) as session:
        with explained(f"cannot unshare {image_id} with {recipient}", hint):
            session.unshare(image_id, recipient)
    click.echo(f"{image_id.lower()} is no longer shared with {escape(recipient)}")


@click.command()
@click.argument("image_id")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per share.")
def shares(image_id: str, as_json: bool, **connection: Any) -> None:
    """Show who can see your image IMAGE_ID, since when and until when."""
    with open_session(**connection) as session:
        with explained(f"cannot list the shares of {image_id}", _NO_IMAGE_OF_YOURS):
            found = session.shares(image_id)
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
        click.echo(f"{image_id.lower()} is shared with nobody", err=True)


@click.command()
@click.argument("image_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@connection_options
def delete(image_id: str, yes: bool, **connection: Any) -> None:
    """Delete your image IMAGE_ID for good: its key is destroyed first, then the stored
    image, its inbox copy and every share. There is no undo."""
    from imgshare.client import image_id_bytes

    image_id = image_id_bytes(image_id).hex()
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"delete asks before it deletes: pass --yes to delete {image_id}")
        if not click.confirm(f"Delete image {image_id} for good?", err=True):
            click.echo("nothing deleted", err=True)
            return
    with open_session(**connection) as session:
        with explained(f"cannot delete {image_id}", _NO_IMAGE_OF_YOURS):
            session.delete(image_id)
    click.echo(f"deleted {image_id}")
