"""`imgshare certs`: the certificate generator (private CA, server and client certificates).

All the work happens in ``imgshare.pki``; this module parses flags, reads passphrase
files and prints what was written. Errors are raised as ``ImgshareError`` and
turned into one line by the dispatcher in ``imgshare.cli``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from imgshare import pki
from imgshare.errors import CertificateError, ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def _dir_option(function: F) -> F:
    return click.option(
        "--dir",
        "directory",
        required=True,
        type=click.Path(path_type=Path),
        help="Folder for the PEM files (created with mode 0700 if missing).",
    )(function)


def _common_options(days: int, days_help: str) -> Callable[[F], F]:
    """The flags that every issuing command shares."""

    def decorate(function: F) -> F:
        options = [
            click.option(
                "--key-type",
                type=click.Choice(["ec", "rsa"]),
                default="ec",
                show_default=True,
                help="ec: ECDSA P-256 (small, fast, recommended); rsa: RSA-3072 for old clients.",
            ),
            click.option("--days", type=int, default=days, show_default=True, help=days_help),
            click.option(
                "--force",
                is_flag=True,
                help="Replace existing files (atomically). Without it nothing is overwritten.",
            ),
            click.option(
                "--passphrase-file",
                type=click.Path(path_type=Path),
                help="Encrypt the new private key(s) with the first line of this file.",
            ),
        ]
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


_CA_PASSPHRASE = click.option(
    "--ca-passphrase-file",
    type=click.Path(path_type=Path),
    help="File whose first line unlocks ca.key, if it is encrypted.",
)
_HOSTS = click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="DNS name or IP address clients use to reach the server; repeat for several. "
    "The first one is also the subject CN. [default: localhost, 127.0.0.1, ::1]",
)


def _days(flag: str, days: int) -> int:
    if not 1 <= days <= pki.MAX_DAYS:
        raise ConfigError(f"{flag} must be 1 to {pki.MAX_DAYS} days, got {days}")
    return days


def _passphrase(path: Path | None) -> bytes | None:
    return None if path is None else pki.read_passphrase_file(path)


def _echo_pair(what: str, cert: Path, key: Path) -> None:
    info = pki.describe_certificate(pki.load_certificate(cert))
    click.echo(f"wrote {what}: {cert} and {key}")
    click.echo(f"  subject {info.subject}, valid until {info.not_after:%Y-%m-%d %H:%M} UTC")
    click.echo(f"  SHA-256 {info.fingerprint_sha256}")


@click.group()
def certs() -> None:
    """Make the private CA, server and client certificates (PEM).

    `certs init` writes a CA (ca.pem, ca.key) and a server certificate (server.pem,
    server.key). Clients trust the server through ca.pem; keep ca.key private, or
    offline once the certificates you need are issued. Private keys are written
    with mode 0600 and are never overwritten without --force.

    To serve under another name (another machine's clients), or to renew, issue a
    new server certificate from the same CA: `imgshare certs server --dir DIR --host
    NAME --force`. Clients keep trusting the server; `certs init --force` would make
    a new CA that no client trusts yet.
    """


@certs.command(short_help="Create a new private CA and a server certificate signed by it.")
@_dir_option
@_HOSTS
@_common_options(
    pki.DEFAULT_SERVER_DAYS, "Server certificate validity in days; short lives limit a stolen key."
)
@click.option(
    "--ca-days",
    type=int,
    default=pki.DEFAULT_CA_DAYS,
    show_default=True,
    help="CA certificate validity in days.",
)
def init(
    directory: Path,
    hosts: tuple[str, ...],
    key_type: pki.KeyType,
    days: int,
    force: bool,
    passphrase_file: Path | None,
    ca_days: int,
) -> None:
    """Create a new private CA and a server certificate signed by it.

    With --force an existing CA is replaced: every client must then trust the new
    ca.pem and client certificates must be issued again. To name another host or
    renew, keep the CA: `imgshare certs server --dir DIR --host NAME --force`.
    --passphrase-file encrypts both ca.key and server.key (the server then needs
    the passphrase).
    """
    try:
        paths = pki.init_certificates(
            directory,
            hosts=hosts or pki.DEFAULT_HOSTS,
            key_type=key_type,
            days=_days("--days", days),
            ca_days=_days("--ca-days", ca_days),
            force=force,
            passphrase=_passphrase(passphrase_file),
        )
    except CertificateError as exc:
        if "already exists" not in str(exc) or not (directory / "ca.pem").exists():
            raise
        names = " ".join(f"--host {host}" for host in hosts) or "--host NAME"
        exists = str(exc).split(";")[0]
        raise CertificateError(
            f"{exists}: this folder holds a CA, and `certs init --force` would replace it "
            "(every client would then stop trusting the server). To name another host or "
            f"renew, keep the CA: `imgshare certs server --dir {directory} {names} --force`"
        ) from exc
    _echo_pair("CA", paths.ca_cert, paths.ca_key)
    _echo_pair("server certificate", paths.server_cert, paths.server_key)
    click.echo("Give ca.pem to clients; keep ca.key secret.")


@certs.command(short_help="Issue a new server certificate from the same CA (renew, rename).")
@_dir_option
@_HOSTS
@_common_options(pki.DEFAULT_SERVER_DAYS, "Server certificate validity in days.")
@_CA_PASSPHRASE
def server(
    directory: Path,
    hosts: tuple[str, ...],
    key_type: pki.KeyType,
    days: int,
    force: bool,
    passphrase_file: Path | None,
    ca_passphrase_file: Path | None,
) -> None:
    """Issue a new server certificate from the CA in --dir (renew, or name hosts).

    The CA stays the same, so clients keep trusting the server. Use --force to
    replace the existing server.pem and server.key, then restart the server. The
    certificate names exactly the --host names given (list every name clients use,
    localhost too if it is still used).
    """
    paths = pki.create_server_certificate(
        directory,
        hosts=hosts or pki.DEFAULT_HOSTS,
        key_type=key_type,
        days=_days("--days", days),
        force=force,
        passphrase=_passphrase(passphrase_file),
        ca_passphrase=_passphrase(ca_passphrase_file),
    )
    _echo_pair("server certificate", paths.server_cert, paths.server_key)
    click.echo("The CA is unchanged: clients keep trusting it. Restart the server to use it.")


@certs.command(short_help="Issue a client certificate for mutual TLS.")
@click.argument("name")
@_dir_option
@_common_options(
    pki.DEFAULT_CLIENT_DAYS,
    "Client certificate validity in days (a year: clients renew less often than servers).",
)
@_CA_PASSPHRASE
def client(
    name: str,
    directory: Path,
    key_type: pki.KeyType,
    days: int,
    force: bool,
    passphrase_file: Path | None,
    ca_passphrase_file: Path | None,
) -> None:
    """Issue a client certificate NAME.pem / NAME.key for mutual TLS.

    NAME is the certificate's CN and the file name: letters, digits, '.', '_'
    and '-', not starting with '.'. Signed by the CA in --dir, which needs
    ca.key (and --ca-passphrase-file if ca.key is encrypted).
    """
    pair = pki.create_client_certificate(
        directory,
        name,
        key_type=key_type,
        days=_days("--days", days),
        force=force,
        passphrase=_passphrase(passphrase_file),
        ca_passphrase=_passphrase(ca_passphrase_file),
    )
    _echo_pair(f"client certificate {name!r}", pair.cert, pair.key)


@certs.command(short_help="Print the certificates in a folder, with their fingerprints.")
@_dir_option
def show(directory: Path) -> None:
    """Print every certificate (*.pem) in --dir: names, validity, key, fingerprint.

    Compare the SHA-256 fingerprint of ca.pem out of band (phone, in person)
    before trusting a CA file that reached you over the network.
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a folder")
    files = sorted(directory.glob("*.pem"))
    if not files:
        raise ConfigError(f"no certificates (*.pem) in {directory}")
    for number, path in enumerate(files):
        info = pki.describe_certificate(pki.load_certificate(path))
        if number:
            click.echo()
        click.echo(path.name)
        for label, value in _show_lines(info):
            click.echo(f"  {label + ':':<13}{value}")


def _show_lines(info: pki.CertificateInfo) -> list[tuple[str, str]]:
    expired = "  EXPIRED" if info.expired else ""
    return [
        ("subject", info.subject),
        ("issuer", info.issuer),
        ("SANs", ", ".join(info.sans) or "(none)"),
        ("not before", f"{info.not_before:%Y-%m-%d %H:%M:%S} UTC"),
        ("not after", f"{info.not_after:%Y-%m-%d %H:%M:%S} UTC{expired}"),
        ("key type", info.key_type),
        ("usage", "CA" if info.is_ca else ", ".join(info.extended_key_usage) or "(any)"),
        ("SHA-256", info.fingerprint_sha256),
    ]
