"""`imgshare migrate`: copy an embedded data folder into PostgreSQL and S3 (several nodes).

The work is ``imgshare.store.migrate``'s; this command finds the source's storage key
and the target's settings, runs it, and says what it did.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from imgshare.errors import ConfigError


@click.command()
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The embedded data folder to copy (its server stopped).",
)
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A node's settings file: catalog_url, object_store_url, inbox_location (and the "
    "S3 endpoint and credentials, or the AWS_* variables).",
)
@click.option(
    "--storage-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The source's storage key. [default: IMGSHARE_STORAGE_KEY, or FROM/storage.key]",
)
@click.option("--check", is_flag=True, help="Copy nothing: only compare source and target.")
@click.option("--deep", is_flag=True, help="With --check: compare every object's bytes too.")
def migrate(
    source: Path, config_file: Path, storage_key_file: Path | None, check: bool, deep: bool
) -> None:
    """Copy an embedded data folder (SQLite catalog, objects, inbox) into the storage
    that several nodes share: the PostgreSQL catalog, the object store and the inbox
    location that the --config file names.

    The source's server must be stopped (its data folder's lock is taken). Objects and
    inbox copies go first, each skipped if the target has it already; then every row
    in one transaction, ids kept; then everything is compared. Run it again after an
    interruption: it goes on where it stopped. The nodes need the source's storage
    key (copy its storage.key, or set IMGSHARE_STORAGE_KEY). Exit status 1 if the
    comparison finds a difference.
    """
    from imgshare.server.app import store_config
    from imgshare.server.config import load_settings
    from imgshare.store import load_or_create_storage_key, make_data_folder, storage_key_from_env
    from imgshare.store.factory import open_store
    from imgshare.store.lock import DataFolderLock
    from imgshare.store.migrate import Migration

    if deep and not check:
        raise click.UsageError("--deep goes with --check")
    settings = load_settings(config_file)
    if not settings.catalog_url:
        raise ConfigError(f"{config_file} names no catalog_url: nothing to migrate into")
    if settings.data.resolve() == source.resolve():
        raise ConfigError("the node's data folder must not be the folder migrated from")
    if not source.is_dir():
        raise ConfigError(f"the data folder {source} does not exist")
    from_env = os.environ.get("IMGSHARE_STORAGE_KEY")
    if storage_key_file is not None:
        key = load_or_create_storage_key(storage_key_file) if storage_key_file.exists() else None
        if key is None:
            raise ConfigError(f"there is no storage key file {storage_key_file}")
    elif from_env:
        key = storage_key_from_env(from_env)
    elif (source / "storage.key").is_file():
        key = load_or_create_storage_key(source / "storage.key")
    else:
        raise ConfigError(
            f"no storage key: {source}/storage.key is missing; give --storage-key-file or "
            "set IMGSHARE_STORAGE_KEY"
        )
    lock = DataFolderLock.acquire(source)  # no server may write to it meanwhile
    try:
        make_data_folder(settings.data)
        with open_store(store_config(settings, key)) as target:
            target.check()
            migration = Migration(source, target, key, progress=_say)
            try:
                report = migration.verify(deep=deep) if check else migration.run()
            finally:
                migration.close()
    finally:
        lock.release()
    rows = ", ".join(f"{table} {count}" for table, count in report.rows.items())
    click.echo(f"rows: {rows}")
    if not check:
        click.echo(
            f"objects: {report.objects_copied} copied, {report.objects_present} there already"
        )
        click.echo(
            f"inbox copies: {report.copies_copied} copied, {report.copies_present} there "
            f"already, {report.copies_missing} missing in the source"
        )
        click.echo("catalog rows: " + ("copied" if report.rows_copied else "there already"))
    for problem in report.problems:
        click.echo(f"imgshare: difference: {problem}", err=True)
    if not report.ok:
        raise SystemExit(1)
    click.echo(
        "the target holds everything the source does" + (" (bytes compared)" if deep else "")
    )


def _say(text: str) -> None:
    click.echo(text, err=True)
