"""Your account on a server: `register`, `login`, `logout`, `passwd` and `token`.

`imgshare login` logs in once with the password (or a client certificate), asks the
server for a token and keeps it in the profile (``imgshare.client.profile``); the
other commands then log in with that token. A password is never stored.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from imgshare.cli.client import (
    Login,
    connect,
    connection_options,
    expiry,
    explained,
    iso,
    open_login,
    parse_server,
    read_password,
    resolve_login,
    until,
)
from imgshare.errors import ConfigError, ImgshareError, PeerError
from imgshare.protocol.constants import MAX_TOKEN_NAME_BYTES, ErrorCode
from imgshare.safetext import escape

if TYPE_CHECKING:
    from imgshare.client.profile import Profile

#: How long the token of `imgshare login` lasts unless told.
DEFAULT_LOGIN_EXPIRY = "90d"


def _new_password(password_file: Path | None) -> str:
    """A new password: the file, IMGSHARE_NEW_PASSWORD, or asked twice."""
    from imgshare.cli.users import read_password_file

    if password_file is not None:
        return read_password_file(password_file)
    from_env = os.environ.get("IMGSHARE_NEW_PASSWORD")
    if from_env is not None:
        return from_env
    return _ask_twice("New password", "--new-password-file FILE or set IMGSHARE_NEW_PASSWORD")


def _ask_twice(what: str, instead: str) -> str:
    if not sys.stdin.isatty():
        raise ConfigError(f"no terminal to ask for the {what.lower()} on: give {instead}")
    return str(click.prompt(what, hide_input=True, confirmation_prompt=True, err=True))


def _token_name(name: str | None) -> str:
    if name is None:
        name = f"cli on {socket.gethostname() or 'this computer'}"
    clipped = name.strip().encode("utf-8")[:MAX_TOKEN_NAME_BYTES].decode("utf-8", "ignore")
    if not clipped or not clipped.isprintable():
        raise ConfigError("--name: a token needs a name of printable characters")
    return clipped


# --- register ----------------------------------------------------------------------------


@click.command()
@connection_options
@click.option(
    "--invite",
    "invitation",
    metavar="CODE",
    envvar="IMGSHARE_INVITE",
    show_envvar=True,
    help="The invitation code the server's administrator gave you (`imgshare user invite`).",
)
def register(invitation: str | None, **connection: Any) -> None:
    """Make yourself an account on a server that allows it (open, or by invitation).

    Give --server, --ca and --user NAME; the password comes from --password-file,
    else IMGSHARE_PASSWORD, else it is asked twice. Then log in with `imgshare login`.
    """
    if not connection["username"]:
        raise ConfigError("give --user NAME: the name you want")
    login = resolve_login(**connection, method="none")
    password = (
        read_password(connection["password_file"])
        if connection["password_file"] or _env_password()
        else _ask_twice("Password", "--password-file FILE or set IMGSHARE_PASSWORD")
    )
    hints = [(ErrorCode.ALREADY_EXISTS, "choose another --user name")]
    with connect(login) as session, explained(f"cannot register {connection['username']}", *hints):
        try:
            session.register(connection["username"], password, invitation)
        except PeerError as exc:
            if exc.code == ErrorCode.FORBIDDEN and not invitation and "invitation" in str(exc):
                raise PeerError(f"{exc} with --invite CODE", exc.code) from exc
            raise
    ca = f" --ca {login.ca_file}" if login.ca_file else ""
    click.echo(
        f"registered {connection['username']} on {login.server}; now log in once with: "
        f"imgshare login --server {login.server}{ca} --user {connection['username']}"
    )


def _env_password() -> bool:
    return os.environ.get("IMGSHARE_PASSWORD") is not None


# --- login and logout --------------------------------------------------------------------


@click.command()
@connection_options
@click.option(
    "--expires",
    metavar="DURATION",
    default=DEFAULT_LOGIN_EXPIRY,
    show_default=True,
    help="The login lasts this long (90s, 30m, 12h, 7d, 2w), or 'never'.",
)
@click.option("--name", help="A name for the login's token [default: cli on HOSTNAME].")
def login(expires: str, name: str | None, **connection: Any) -> None:
    """Log in once: with your password (or client certificate), get a login token and
    save the server, its CA, your name and the token in your profile.

    The profile is $IMGSHARE_CONFIG, else ~/.config/imgshare/profile.json, mode 0600;
    the password is never saved. Later commands (send, list, get, share...) then need
    no flags. Flags not given come from the profile (`imgshare login` alone renews it).
    """
    from imgshare.client import profile as profiles

    session_login = resolve_login(**connection, method="password")
    ca_pem = session_login.ca_pem_text()
    expires_ms = 0 if expires.strip().lower() == "never" else expiry(expires)
    token_name = _token_name(name)
    with open_login(session_login) as session:
        user = session.username or ""
        with explained("cannot make a login token"):
            token = session.create_token(token_name, expires_ms)
    cert, key = session_login.client_cert, session_login.client_key
    new = profiles.Profile(
        server=session_login.server,
        ca_pem=ca_pem,
        user=user,
        token=token.secret,
        token_id=token.token_id,
        token_expires_ms=token.expires_ms,
        client_cert=str(cert.resolve()) if cert else None,
        client_key=str(key.resolve()) if key else None,
    )
    path = session_login.profile_path
    old = _saved_or_none(path)
    profiles.save(new, path)
    click.echo(
        f"logged in as {user} on {new.server} {until(token.expires_ms, 'until you log out')}; "
        f"saved to {path} (token {token.token_id}, {token_name!r})"
    )
    if old is not None and old.token is not None:
        outcome = _revoke_saved(old, path)
        if outcome:
            click.echo(f"imgshare: warning: your previous login: {outcome}", err=True)


def _saved_or_none(path: Path) -> Profile | None:
    from imgshare.client import profile as profiles

    try:
        return profiles.load(path)
    except ConfigError:
        return None


def _revoke_saved(saved: Profile, path: Path) -> str | None:
    """Revoke the token of ``saved`` on its server. None when it is revoked (or was
    already dead); else why it could not be, and what to do."""
    assert saved.token is not None and saved.token_id is not None
    host, port = parse_server(saved.server)
    cert, key = saved.client_cert, saved.client_key
    login = Login(
        host, port, None, saved.ca_pem, Path(cert) if cert else None, Path(key) if key else None,
        "token", saved.user, None, saved, path, token=saved.token,
    )  # fmt: skip
    try:
        with connect(login) as session:
            session.token_login(saved.token)
            session.revoke_token(saved.token_id)
        return None
    except PeerError as exc:
        if exc.code in (ErrorCode.AUTH_FAILED, ErrorCode.NOT_FOUND, ErrorCode.AUTH_REQUIRED):
            return None  # revoked or expired already: nothing left to end
        why = str(exc)
    except ImgshareError as exc:  # unreachable, TLS, a damaged CA, a broken connection
        why = str(exc)
    ends = until(saved.token_expires_ms, "until it is revoked")
    return (
        f"token {saved.token_id} of {saved.user} on {saved.server} could NOT be revoked "
        f"({why}); it stays valid {ends}: log in to {saved.server} again and run "
        f"`imgshare token revoke {saved.token_id}`"
    )


@click.command(
    epilog="\b\nEnvironment variables:\n  IMGSHARE_CONFIG  the profile [default: "
    "~/.config/imgshare/profile.json]"
)
def logout() -> None:
    """Revoke your login token on the server and remove it from your profile.

    If the server cannot be reached the token is still forgotten here, and you are
    told how to revoke it later. The server and CA stay in the profile, so
    `imgshare login` alone logs in again.
    """
    from imgshare.client import profile as profiles

    path = profiles.default_path()
    saved = profiles.load(path)
    if saved is None or saved.token is None:
        click.echo(f"not logged in (no login token in {path})")
        return
    outcome = _revoke_saved(saved, path)
    profiles.save(saved.without_token(), path)
    if outcome is not None:
        raise ImgshareError(f"logged out here (the token is gone from {path}), but {outcome}")
    click.echo(
        f"logged out: {saved.user}'s token {saved.token_id} on {saved.server} is revoked "
        f"and gone from {path}"
    )


# --- passwd ------------------------------------------------------------------------------


@click.command()
@connection_options
@click.option(
    "--new-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the new password from this file's first line (else IMGSHARE_NEW_PASSWORD, "
    "else it is asked twice).",
)
@click.option(
    "--revoke-other-tokens",
    is_flag=True,
    help="Also end every other login and API token of yours (this profile's stays).",
)
def passwd(new_password_file: Path | None, revoke_other_tokens: bool, **connection: Any) -> None:
    """Change your password. Asks for the current one (or --password-file, or
    IMGSHARE_PASSWORD), then the new one twice."""
    from imgshare.client import profile as profiles

    session_login = resolve_login(**connection, token_first=True)
    old = session_login.read_password("Current password")
    new = _new_password(new_password_file)
    hints = ((ErrorCode.AUTH_FAILED, "the current password is not right"),)
    with open_login(session_login) as session, explained("password not changed", *hints):
        session.change_password(old, new, revoke_other_tokens)
        user = session.username
    click.echo(f"password of {user} on {session_login.server} changed")
    if not revoke_other_tokens:
        return
    if session_login.profile_token_used:
        click.echo("your other tokens are revoked; this profile's login stays")
        return
    click.echo("all your tokens are revoked")
    saved = session_login.profile
    if saved is not None and saved.token is not None and saved.user == user:
        profiles.save(saved.without_token(), session_login.profile_path)
        click.echo(f"so is the login in {session_login.profile_path}: run `imgshare login`")


# --- tokens ------------------------------------------------------------------------------


@click.group()
def token() -> None:
    """Your API tokens: each logs in without a password (IMGSHARE_TOKEN=... for
    scripts; `imgshare login` keeps one in your profile)."""


@token.command("create")
@click.option("--name", help="What it is for [default: cli on HOSTNAME].")
@click.option(
    "--expires", metavar="DURATION", help="It stops working after 90s, 30m, 12h, 7d... "
    "[default: never, until revoked]."
)  # fmt: skip
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def token_create(name: str | None, expires: str | None, as_json: bool, **connection: Any) -> None:
    """Make a new API token and print it, this once only: keep it secret.

    Use it as IMGSHARE_TOKEN=... with any command (a script, a CI job); end it with
    `imgshare token revoke ID`.
    """
    token_name = _token_name(name)
    expires_ms = expiry(expires)
    with open_login(resolve_login(**connection)) as session:
        with explained("cannot make a token"):
            new = session.create_token(token_name, expires_ms)
    if as_json:
        record = {
            "id": new.token_id,
            "name": token_name,
            "token": new.secret,
            "expires": iso(new.expires_ms) if new.expires_ms else None,
        }
        click.echo(json.dumps(record))
        return
    click.echo(new.secret)
    click.echo(
        f"token {new.token_id} ({token_name!r}) {until(new.expires_ms, 'until revoked')}; "
        "shown only this once: keep it secret, use it as IMGSHARE_TOKEN",
        err=True,
    )


@token.command("list")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per token.")
def token_list(as_json: bool, **connection: Any) -> None:
    """List your tokens: id, name, made, expires, last used (this profile's is marked)."""
    from imgshare.store.catalog import now_ms

    session_login = resolve_login(**connection)
    with open_login(session_login) as session:
        tokens = session.list_tokens()
    saved = session_login.profile
    mine = saved.token_id if saved is not None and session_login.profile_token_used else None
    now = now_ms()
    for item in tokens:
        expired = bool(item.expires_ms) and item.expires_ms <= now
        if as_json:
            record = {
                "id": item.token_id,
                "name": item.name,
                "created": iso(item.created_ms),
                "expires": iso(item.expires_ms) if item.expires_ms else None,
                "last_used": iso(item.last_used_ms) if item.last_used_ms else None,
                "expired": expired,
                "this_profile": item.token_id == mine,
            }
            click.echo(json.dumps(record))
            continue
        ends = "EXPIRED" if expired else until(item.expires_ms, "until revoked")
        used = f"used {iso(item.last_used_ms)}" if item.last_used_ms else "never used"
        marker = "  (this profile)" if item.token_id == mine else ""
        quoted = f'"{escape(item.name)}"'
        click.echo(
            f"{item.token_id:>6}  {quoted:<24}  made {iso(item.created_ms)}  {ends}  {used}{marker}"
        )


@token.command("revoke")
@click.argument("token_id", type=int, metavar="ID")
@connection_options
def token_revoke(token_id: int, **connection: Any) -> None:
    """Revoke your token ID (see `imgshare token list`); it stops working at once."""
    from imgshare.client import profile as profiles

    hint = (ErrorCode.NOT_FOUND, "see your tokens with `imgshare token list`")
    session_login = resolve_login(**connection)
    with open_login(session_login) as session:
        with explained(f"cannot revoke token {token_id}", hint):
            session.revoke_token(token_id)
        user = session.username
    click.echo(f"token {token_id} revoked")
    saved = session_login.profile
    if saved is not None and saved.token_id == token_id and saved.user == user:
        profiles.save(saved.without_token(), session_login.profile_path)
        click.echo("it was your profile's login: run `imgshare login` to log in again")
