"""`imgshare user`: the accounts of a server: add, list, remove, reset a password,
invite someone to register.

These commands work while the server runs: they take no lock and coordinate through
the catalog (SQLite serializes the writes; PostgreSQL's transactions), like the
server's own workers. They find the catalog as the server does: ``--config`` names
the server's settings file (its data folder, and with several nodes its
``catalog_url`` and object store), ``IMGSHARE_*`` variables as for ``imgshare
serve``, and ``--data`` wins over both. Every command but ``add`` refuses a data
folder without a catalog, so that a mistyped ``--data`` says so instead of making an
empty folder.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from imgshare.errors import ConfigError
from imgshare.server.accounts import Accounts

if TYPE_CHECKING:
    from imgshare.server.config import ServerSettings
    from imgshare.store import SQLCatalog

_DATA = click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The server's data folder. [default: the --config file's, IMGSHARE_DATA, or ./data]",
)
_CONFIG = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The server's settings file (TOML), to find its data folder and catalog as it "
    "does (with several nodes: catalog_url, object_store_url, inbox_location).",
)

_PASSWORD_FILE = click.option(
    "--password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the password from the first line of this file instead of a prompt.",
)

#: An invitation lasts at most this long.
MAX_INVITATION_SECONDS = 365 * 86400


def _invitation_span(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """``--expires``: seconds, as ``imgshare share`` and ``token create`` read them."""
    from imgshare.client.duration import parse_duration

    try:
        seconds = parse_duration(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    if seconds > MAX_INVITATION_SECONDS:
        raise click.BadParameter(f"{value!r} is too long for an invitation: at most 365d")
    return seconds


def read_password_file(path: Path) -> str:
    """First line of a password file, without its line ending."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read password file {path}") from exc
    return text.splitlines()[0] if text else ""


def utc_time(ms: int) -> str:
    """A catalog time (unix ms) as people read it, in UTC."""
    return f"{datetime.fromtimestamp(ms / 1000, UTC):%Y-%m-%d %H:%M:%SZ}"


def server_settings(config_file: Path | None, data: Path | None) -> ServerSettings:
    """The server's settings as ``imgshare serve`` would read them (the file, then
    ``IMGSHARE_*`` variables), with ``data`` if given. Raises ``ConfigError``."""
    from imgshare.server.config import load_settings

    return load_settings(config_file, overrides={"data": data})


def existing_catalog(settings: ServerSettings) -> SQLCatalog:
    """The server's catalog: PostgreSQL at ``catalog_url``, or the data folder's, if it
    has one. Raises ``ConfigError`` if the data folder has none (a mistyped ``--data``:
    nothing is created), ``StorageError`` (the database unreachable...)."""
    from imgshare.store import SQLiteCatalog, catalog_path
    from imgshare.store.factory import open_postgres

    if settings.catalog_url:
        return open_postgres(settings.catalog_url, pool_size=1)
    data = settings.data
    path = catalog_path(data)
    if not path.is_file():
        where = "does not exist" if not data.exists() else f"has no {path.name}"
        raise ConfigError(
            f"the data folder {data} {where}: give the server's folder with --data "
            "(or IMGSHARE_DATA)"
        )
    return SQLiteCatalog(path)


def _password(password_file: Path | None, prompt: str = "Password") -> str:
    if password_file is not None:
        return read_password_file(password_file)
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))


@click.group()
def user() -> None:
    """Manage user accounts (works while the server runs)."""


@user.command("add")
@click.argument("name")
@_DATA
@_CONFIG
@_PASSWORD_FILE
def add(name: str, data: Path | None, config_file: Path | None, password_file: Path | None) -> None:
    """Add user NAME (lowercase letters, digits, '_', '.', '-'; 1-32 characters)."""
    from imgshare.store import open_catalog
    from imgshare.store.factory import open_postgres

    settings = server_settings(config_file, data)
    password = _password(password_file)
    catalog = (
        open_postgres(settings.catalog_url, pool_size=1)
        if settings.catalog_url
        else open_catalog(settings.data)
    )
    with catalog:
        Accounts(catalog).add_user(name, password)
    click.echo(f"user {name} added")


@user.command("list")
@_DATA
@_CONFIG
def list_users(data: Path | None, config_file: Path | None) -> None:
    """List the users and when they were added."""
    with existing_catalog(server_settings(config_file, data)) as catalog:
        for entry in catalog.list_users():
            click.echo(f"{entry.name}\t{utc_time(entry.created_at)}")


@user.command("passwd")
@click.argument("name")
@_DATA
@_CONFIG
@_PASSWORD_FILE
def passwd(
    name: str, data: Path | None, config_file: Path | None, password_file: Path | None
) -> None:
    """Reset the password of user NAME (the admin's reset: the old one is not asked).

    Also revokes all of NAME's API tokens. Every open session of NAME that logged in
    with the old password or a token ends at its next request. Recorded in the audit
    trail as password_reset.
    """
    from imgshare.server.accounts import check_username
    from imgshare.store.catalog import now_ms

    check_username(name)
    with existing_catalog(server_settings(config_file, data)) as catalog:
        # Before the prompt: a typo should not cost a password.
        if catalog.get_user_by_name(name) is None:
            raise ConfigError(f"no user named {name!r} (imgshare user list shows them)")
        password = _password(password_file, f"New password for {name}")
        revoked = Accounts(catalog).set_password(name, password)
        catalog.audit("password_reset", name, None, now_ms(), tokens_revoked=revoked)
    click.echo(f"password of user {name} reset; {revoked} API token(s) revoked")


@user.command("invite")
@_DATA
@click.option(
    "--expires",
    metavar="DURATION",
    default="7d",
    callback=_invitation_span,
    show_default=True,
    help="How long the code stays valid: 30m, 12h, 7d, 2w, 1d12h (at most 365d).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help='The server\'s settings file: warns unless it has registration = "invite", '
    "and gives the data folder (or the catalog) when --data is not given.",
)
def invite(data: Path | None, expires: int, config_file: Path | None) -> None:
    """Make a one-time invitation code for someone to register their own account.

    Prints the code alone on standard output (CODE=$(imgshare user invite)) and how
    to use it on standard error. The code is shown only this once: the catalog keeps
    only its hash. It works while the server runs with registration = "invite" (a
    setting of `imgshare serve`); with --config this command checks that setting.
    Recorded in the audit trail as invitation_created (without the code).
    """
    from imgshare.server.credentials import new_invitation
    from imgshare.store.catalog import now_ms

    settings = server_settings(config_file, data)
    registration = settings.registration if config_file is not None else None
    data = settings.data
    now = now_ms()
    expires_ms = now + expires * 1000
    with existing_catalog(settings) as catalog:
        code = new_invitation(catalog, now, expires_ms)
        catalog.audit("invitation_created", None, None, now, expires_ms=expires_ms)
    if registration == "closed":
        click.echo(
            f'imgshare: warning: {config_file} has registration = "closed": nobody can '
            'register with this code until the server runs with registration = "invite"',
            err=True,
        )
    elif registration == "open":
        click.echo(
            f'imgshare: warning: {config_file} has registration = "open": anyone may '
            "register without a code",
            err=True,
        )
    click.echo(code)
    if registration is None:
        setting = (
            'It works only while the server runs with registration = "invite" (in its\n'
            "settings file, or IMGSHARE_REGISTRATION=invite); --config FILE checks that.\n"
        )
    elif registration == "invite":
        setting = f'{config_file} has registration = "invite".\n'
    else:
        setting = ""
    click.echo(
        f"\nA one-time invitation, valid until {utc_time(expires_ms)}. Give it to the new\n"
        f"user with the server's CA certificate (normally {data / 'certs' / 'ca.pem'});\n"
        "they register with\n\n"
        f"    imgshare register --server HOST:PORT --ca ca.pem --user NAME --invite {code}\n\n"
        f"{setting}The code is shown only this once: the server keeps only its hash.",
        err=True,
    )


@user.command("remove")
@click.argument("name")
@_DATA
@_CONFIG
@click.option("--purge", is_flag=True, help="Also delete the user's images (sealed and inbox).")
def remove(name: str, data: Path | None, config_file: Path | None, purge: bool) -> None:
    """Remove user NAME. Refused while they own images, unless --purge.

    --purge deletes each image as `imgshare delete` does: the rows, and with them the
    wrapped content keys, go first in one durable commit; then the inbox copies and
    the sealed objects. A running server ends the user's open sessions and uploads
    within a second; the user's id is never given to anyone else. Recorded in the
    audit trail as user_removed.
    """
    from imgshare.server.accounts import check_username
    from imgshare.server.app import store_config
    from imgshare.store import open_store
    from imgshare.store.catalog import now_ms

    check_username(name)
    settings = server_settings(config_file, data)
    existing_catalog(settings).close()  # a mistyped --data makes no folders
    # No storage key needed: removing only deletes. The inbox is reached even when
    # the server keeps no copies, so that old copies go too.
    with open_store(store_config(settings, None)) as store:
        deleted = store.remove_user(name, purge=purge)
        store.catalog.audit(
            "user_removed", name, None, now_ms(), purge=purge, images_deleted=len(deleted)
        )
    click.echo(f"user {name} removed" + (f" with {len(deleted)} image(s)" if deleted else ""))
