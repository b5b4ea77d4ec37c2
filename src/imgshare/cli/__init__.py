"""The ``imgshare`` command line: the only place in imgshare that prints.

Each command group lives in its own module; this one holds the root group and the
dispatcher that turns ``ImgshareError`` into a one-line message and exit status 1.
"""

from __future__ import annotations

import sys

import click

from imgshare import __version__
from imgshare.errors import ImgshareError
from imgshare.safetext import escape


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgshare")
def cli() -> None:
    """imgshare: send images to a server you control, end-to-end encrypted inside TLS.

    Start with `imgshare certs init` (or just `imgshare serve`, which makes
    certificates on first start), add a user with `imgshare user add`, then send
    images with `imgshare send`.
    """


def _register_commands() -> None:
    # Imported here so that each command module can import `cli` helpers freely.
    from imgshare.cli import account, audit, certs, client, serve, users

    cli.add_command(certs.certs)
    cli.add_command(serve.serve)
    cli.add_command(users.user)
    cli.add_command(audit.audit)
    cli.add_command(client.send)
    cli.add_command(client.get)
    cli.add_command(client.list_images)
    for command in (client.share, client.unshare, client.shares, client.delete):
        cli.add_command(command)
    for command in (account.register, account.login, account.logout, account.passwd):
        cli.add_command(command)
    cli.add_command(account.token)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map the project's errors to a message and exit status 1."""
    try:
        cli.main(args=argv, prog_name="imgshare", standalone_mode=False)
    except ImgshareError as exc:
        click.echo(f"imgshare: error: {escape(str(exc))}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("imgshare: aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("imgshare: interrupted", err=True)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
