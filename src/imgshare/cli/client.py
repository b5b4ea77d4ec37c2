"""`imgshare send`, `get` and `list`: the minimal command-line client."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from imgshare.errors import ConfigError, ImgshareError, PeerError
from imgshare.protocol.constants import DEFAULT_PORT
from imgshare.safetext import escape, safe_filename

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CA = Path("data/certs/ca.pem")


def connection_options(function: F) -> F:
    """The flags every client command shares."""
    options = [
        click.option(
            "--server",
            default=f"localhost:{DEFAULT_PORT}",
            show_default=True,
            envvar="IMGSHARE_SERVER",
            help="HOST:PORT of the server ([::1]:PORT for IPv6).",
        ),
        click.option(
            "--ca",
            type=click.Path(path_type=Path, dir_okay=False),
            envvar="IMGSHARE_CA",
            help=f"CA certificate that signed the server's (default: {DEFAULT_CA} if it exists).",
        ),
        click.option("--user", "username", envvar="IMGSHARE_USER", help="Your user name."),
        click.option(
            "--password-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="File whose first line is the password (else IMGSHARE_PASSWORD, else a prompt).",
        ),
        click.option(
            "--client-cert",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Client certificate for mutual TLS.",
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


def _password(password_file: Path | None) -> str:
    from imgshare.cli.users import read_password_file

    if password_file is not None:
        return read_password_file(password_file)
    from_env = os.environ.get("IMGSHARE_PASSWORD")
    if from_env is not None:
        return from_env
    return str(click.prompt("Password", hide_input=True, err=True))


def open_session(
    server: str,
    ca: Path | None,
    username: str | None,
    password_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
) -> Any:
    """Connect with TLS, check the server at both layers against the CA, log in."""
    from imgshare import pki, tls
    from imgshare.client import ClientSession, ca_verifier

    if ca is None:
        if not DEFAULT_CA.exists():
            raise ConfigError("give --ca CA.pem (the ca.pem of the server's certificates)")
        ca = DEFAULT_CA
    if not username:
        raise ConfigError("give --user NAME (or set IMGSHARE_USER)")
    host, port = parse_server(server)
    context = tls.create_client_context(ca, client_cert=client_cert, client_key=client_key)
    verifier = ca_verifier([pki.load_certificate(ca)], host)
    session = ClientSession.connect(host, port, context, verifier=verifier)
    try:
        session.login(username, _password(password_file))
    except BaseException:
        session.close()
        raise
    return session


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def send(files: tuple[Path, ...], as_json: bool, **connection: Any) -> None:
    """Send image FILES to the server, end-to-end encrypted; print each receipt.

    For each image it prints the HMAC it computed ("HMAC of image on client side")
    and the server's signed receipt, whose HMAC must match (it is checked).
    """
    session = open_session(**connection)
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
                session = open_session(**connection)  # the connection may be unusable
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
            "server_time": _iso(result.server_time_ms),
            "receipt_signature": result.receipt.signature.hex(),
        }
        click.echo(json.dumps(record))
        return
    click.echo(f"HMAC of image on client side: {result.hmac}")
    click.echo(
        f"{escape(str(path))}: stored as {result.id} ({result.size} bytes, sha256 "
        f"{result.sha256}) at {_iso(result.server_time_ms)}; signed receipt checked, "
        "server HMAC matches"
    )


@click.command()
@click.argument("image_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the image [default: its name, in this folder].",
)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def get(image_id: str, output: Path | None, force: bool, as_json: bool, **connection: Any) -> None:
    """Download image IMAGE_ID, check every chunk and its HMAC, then write it."""
    with open_session(**connection) as session:
        if output is None:
            entries = {e.image_id.hex(): e for e in session.list_images()}
            entry = entries.get(image_id.lower())
            fallback = f"{image_id.lower()}.img"
            output = Path(safe_filename(entry.name, fallback) if entry else fallback)
        result = session.download(image_id.lower(), output, overwrite=force)
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
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def list_images(as_json: bool, **connection: Any) -> None:
    """List your images on the server."""
    with open_session(**connection) as session:
        entries = session.list_images()
    for entry in entries:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "id": entry.image_id.hex(),
                        "name": entry.name,
                        "size": entry.size,
                        "owner": entry.owner,
                        "created": _iso(entry.created_ms),
                        "hmac": entry.hmac.hex(),
                    }
                )
            )
        else:
            click.echo(
                f"{entry.image_id.hex()}  {entry.size:>12}  {_iso(entry.created_ms)}  "
                f"{escape(entry.name)}"
            )
