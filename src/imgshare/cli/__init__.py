"""The ``imgshare`` command line: the only place in imgshare that prints.

Each command group lives in its own module, imported only when its command runs (or
its help is asked for): `imgshare list` does not pay for the server's modules, and
`imgshare --help` for none. ``COMMANDS`` names them, each with the summary that
`imgshare --help` shows (a complete sentence: click would cut a docstring's first
sentence off at the terminal's width). This module also holds the dispatcher that
turns ``ImgshareError`` into a message and exit status 1.
"""

from __future__ import annotations

import sys

import click

from imgshare import __version__
from imgshare.errors import ImgshareError

#: name -> (module in imgshare.cli, or a full module path, attribute, summary for
#: `imgshare --help`).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("serve", "serve", "Run the server (TLS, end-to-end encrypted uploads)."),
    "user": ("users", "user", "Manage user accounts (works while the server runs)."),
    "audit": ("audit", "audit", "Show the audit trail of security events."),
    "migrate": (
        "migrate",
        "migrate",
        "Copy an embedded data folder into PostgreSQL and S3, for several nodes.",
    ),
    "certs": ("certs", "certs", "Make the private CA, server and client certificates."),
    "send": ("send", "send", "Send images to the server, end-to-end encrypted."),
    "get": ("client", "get", "Fetch images by id, each checked end to end."),
    "list": ("client", "list_images", "List your images, or those shared with you."),
    "share": ("client", "share", "Let another user fetch one of your images."),
    "unshare": ("client", "unshare", "Stop sharing one of your images with a user."),
    "shares": ("client", "shares", "Show who can see one of your images."),
    "delete": ("client", "delete", "Delete one of your images for good."),
    "register": ("account", "register", "Make yourself an account on a server."),
    "login": ("account", "login", "Log in once; later commands need no flags."),
    "logout": ("account", "logout", "Revoke your saved login and forget it."),
    "passwd": ("account", "passwd", "Change your password."),
    "token": ("account", "token", "Make, list and revoke API tokens for scripts."),
    "gui": ("imgshare.gui.command", "gui", "Open the desktop client: send, browse and share."),
}

ROOT_EPILOG = """\b
Environment variables: the client commands read IMGSHARE_SERVER, IMGSHARE_CA,
IMGSHARE_USER, IMGSHARE_PASSWORD, IMGSHARE_TOKEN, IMGSHARE_CONNECT_TIMEOUT and
IMGSHARE_CONFIG (see `imgshare COMMAND --help`); `imgshare serve` reads
IMGSHARE_<SETTING> for each of its settings (docs/operations.md)."""


class LazyGroup(click.Group):
    """A group whose commands are imported when first used (see the module docstring)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in COMMANDS:
            import importlib

            module_name, attribute, _ = COMMANDS[cmd_name]
            full = module_name if "." in module_name else f"imgshare.cli.{module_name}"
            module = importlib.import_module(full)
            command = getattr(module, attribute)
            assert isinstance(command, click.Command)
            _document(command)
            self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The summaries from ``COMMANDS``, without importing a command module."""
        rows = []
        for name in self.list_commands(ctx):
            if name in COMMANDS:
                rows.append((name, COMMANDS[name][2]))
            elif (command := self.commands.get(name)) is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=200)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _document(command: click.Command) -> None:
    """Finish the help of a command just imported: a client command lists the
    environment variables it reads; no summary of a subcommand is cut off mid-sentence
    (its first sentence becomes its summary, wrapped instead of truncated)."""
    if any(getattr(param, "envvar", None) == "IMGSHARE_SERVER" for param in command.params):
        from imgshare.cli.client import ENVIRONMENT_HELP

        if not command.epilog:
            command.epilog = ENVIRONMENT_HELP
        elif "IMGSHARE_TOKEN" not in command.epilog:
            command.epilog = f"{ENVIRONMENT_HELP}\n\n{command.epilog}"
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            if sub.short_help is None and sub.help:
                sub.short_help = first_sentence(sub.help)
            _document(sub)


def first_sentence(text: str) -> str:
    """The first sentence of a help text's first paragraph, whole."""
    paragraph = " ".join(text.strip().split("\n\n", 1)[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=ROOT_EPILOG,
)
@click.version_option(__version__, prog_name="imgshare")
def cli() -> None:
    """imgshare: send images to a server you control, end-to-end encrypted inside TLS.

    Start the server with `imgshare serve` (it makes its certificates on first start),
    add a user with `imgshare user add NAME`, log in once with `imgshare login
    --server HOST:PORT --ca ca.pem --user NAME`, then send images with `imgshare send
    FILE...` from any folder.
    """


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map the project's errors to a message and exit status 1."""
    try:
        cli.main(args=argv, prog_name="imgshare", standalone_mode=False)
    except ImgshareError as exc:
        _error(str(exc))
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


def _error(message: str) -> None:
    """``imgshare: error: ...``; a message of several lines (a certificate that did not
    verify, ambiguous ids) keeps its lines, each escaped."""
    from imgshare.safetext import escape

    first, *details = message.split("\n")
    lines = [f"imgshare: error: {escape(first)}", *(escape(line) for line in details)]
    click.echo("\n".join(lines), err=True)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
