from click.testing import CliRunner

from imgshare import __version__
from imgshare.cli import cli, main


def test_version_flag_prints_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_command_is_an_error(capsys: object) -> None:
    assert main(["no-such-command"]) != 0
