"""`imgshare serve`: run the server on the embedded default or a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from imgshare import logs
from imgshare.protocol.constants import DEFAULT_PORT
from imgshare.server.config import load_settings


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file with settings (a [server] table or top-level keys).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    help="Data folder: catalog, objects, inbox, certificates, storage key. [default: ./data]",
)
@click.option("--host", help="Address to listen on. [default: 127.0.0.1]")
@click.option("--port", type=int, help=f"TCP port (0 picks a free one). [default: {DEFAULT_PORT}]")
@click.option(
    "--cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Server certificate PEM (default: DATA/certs/server.pem, made on first start).",
)
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), help="Its private key PEM.")
@click.option(
    "--client-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Require client certificates from this CA (mutual TLS).",
)
@click.option(
    "--tls-min", type=click.Choice(["1.2", "1.3"]), help="Lowest TLS version. [default: 1.3]"
)
@click.option(
    "--inbox/--no-inbox",
    default=None,
    help="Keep a decrypted copy in DATA/inbox/<user>/. [default: on]",
)
@click.option("--max-image-size", type=int, help="Largest image in bytes. [default: 268435456]")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Worker processes (0: one per CPU). [default: 0]",
)
@click.option(
    "--log-format",
    type=click.Choice(["human", "json"]),
    help="Log lines for people or machines. [default: human]",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[default: info]"
)
def serve(config_file: Path | None, **flags: Any) -> None:
    """Serve images over TLS with end-to-end encryption.

    Settings come from flags, then IMGSHARE_* environment variables (IMGSHARE_PORT,
    IMGSHARE_DATA, ...), then the --config file, then defaults. On an empty data folder
    the first start creates a CA and server certificate, the storage key and the
    catalog. The server runs one worker process per CPU (--workers) under a supervisor
    that owns the data folder. Stop with Ctrl-C or SIGTERM: uploads in flight get a
    grace period to finish, the rest roll back. SIGHUP reloads the certificate and key
    for new connections.
    """
    from imgshare.server.supervisor import Supervisor

    settings = load_settings(config_file, overrides=flags)
    logs.configure(settings.log_format, settings.log_level)
    status = Supervisor(settings).run()
    if status:
        raise SystemExit(status)
