"""`imgshare user`: add, list and remove the accounts of a data folder."""

from __future__ import annotations

from pathlib import Path

import click

from imgshare.errors import ConfigError
from imgshare.server.accounts import Accounts

_DATA = click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("data"),
    show_default=True,
    envvar="IMGSHARE_DATA",
    help="The server's data folder.",
)


def read_password_file(path: Path) -> str:
    """First line of a password file, without its line ending."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read password file {path}") from exc
    return text.splitlines()[0] if text else ""


@click.group()
def user() -> None:
    """Manage user accounts (works while the server runs)."""


@user.command("add")
@click.argument("name")
@_DATA
@click.option(
    "--password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the password from the first line of this file instead of a prompt.",
)
def add(name: str, data: Path, password_file: Path | None) -> None:
    """Add user NAME (lowercase letters, digits, '_', '.', '-'; 1-32 characters)."""
    from imgshare.server import open_catalog

    if password_file is not None:
        password = read_password_file(password_file)
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with open_catalog(data) as catalog:
        Accounts(catalog).add_user(name, password)
    click.echo(f"user {name} added")


@user.command("list")
@_DATA
def list_users(data: Path) -> None:
    """List the users and when they were added."""
    from datetime import UTC, datetime

    from imgshare.server import open_catalog

    with open_catalog(data) as catalog:
        for entry in catalog.list_users():
            created = datetime.fromtimestamp(entry.created_at / 1000, UTC)
            click.echo(f"{entry.name}\t{created:%Y-%m-%d %H:%M:%SZ}")


@user.command("remove")
@click.argument("name")
@_DATA
@click.option("--purge", is_flag=True, help="Also delete the user's images (sealed and inbox).")
def remove(name: str, data: Path, purge: bool) -> None:
    """Remove user NAME. Refused while they own images, unless --purge.

    A running server ends the user's open sessions and uploads within a second; the
    user's id is never given to anyone else.
    """
    from imgshare.store import StoreConfig, open_store

    # No storage key needed: removing only deletes. The inbox is opened even when
    # the server keeps no copies, so that old copies go too.
    with open_store(StoreConfig(data=data, storage_key=None, inbox=True)) as store:
        deleted = store.remove_user(name, purge=purge)
    click.echo(f"user {name} removed" + (f" with {len(deleted)} image(s)" if deleted else ""))
