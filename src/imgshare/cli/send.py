"""`imgshare send`: files and folders of images to the server, several at once, with
progress bars on a terminal, plain lines elsewhere, or JSON.

The order of work is what a person expects: every path is checked before anything
connects (a typo costs no password prompt), the password (if one is needed) is asked
once, the server's limits are learned (SERVER_INFO) and sizes checked before any
upload, and then the images go, ``--parallel`` at once, each on a connection of its
own. The sending itself is the Python API's (``imgshare.client.api.Client.send``),
resumable by default (docs/client.md, "Resuming"); this module chooses, draws
(``imgshare.cli.progress``) and sums up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from imgshare.cli.client import Login, connection_options, open_login, resolve_login
from imgshare.errors import ImgshareError
from imgshare.safetext import escape

if TYPE_CHECKING:
    from imgshare.cli.progress import SendOutput
    from imgshare.client.api import SendPlan
    from imgshare.client.metadata import StripMode

#: Uploads at once when logging in is cheap (a token or a client certificate). The
#: server lets one user have 4 uploads in flight, so more only wait out TRY_LATER;
#: measured (docs/client.md), 20 photos took 0.75 / 0.65 / 0.60 / 1.66 s with 1 / 2 /
#: 4 / 8, on two cores shared with the server; over a network, latency favours it more.
DEFAULT_PARALLEL = 4
#: With a password, each connection costs the server one argon2id hash (64 MiB), so
#: one connection unless told otherwise.
PASSWORD_PARALLEL = 1

_EPILOG = """\b
Resuming: an image of 8 MiB or more gets a resume record before it is sent
(its chunks' SHA-256 and its content key, in a file of mode 0600). If the
upload is cut (a dropped connection, a killed client, Ctrl-C), a network
error is retried (with back-off) as a resume, and the same command run
again later goes on from the last chunk the server made durable (the
server keeps it 24 h), never storing a second copy. A file changed since
is sent afresh, with a new key. The record is deleted once the image is
stored. Records live in $IMGSHARE_RESUME_DIR, else
$XDG_STATE_HOME/imgshare/resume, else ~/.local/state/imgshare/resume.
--no-resume sends without a record.

\b
Exit status: 0 when every image was sent (files skipped in folders do not
count), 1 when any was not (the last line says how many), 2 for a usage
error, 130 when interrupted (Ctrl-C: uploads under way stop; the server
keeps what it made durable of the resumable ones, nothing of the others;
images already stored stay stored).

\b
Environment:
  IMGSHARE_SERVER, IMGSHARE_CA, IMGSHARE_USER  as --server, --ca, --user
  IMGSHARE_PASSWORD   the password (instead of --password-file or a prompt)
  IMGSHARE_TOKEN      an API token to log in with (`imgshare token create`)
  IMGSHARE_CONFIG     the profile `imgshare login` saved [default:
                      $XDG_CONFIG_HOME/imgshare/profile.json, else
                      ~/.config/imgshare/profile.json]
  IMGSHARE_RESUME_DIR the folder of resume records [default:
                      $XDG_STATE_HOME/imgshare/resume, else
                      ~/.local/state/imgshare/resume]
  NO_COLOR            progress bars without colour
"""


@click.command(epilog=_EPILOG)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@connection_options
@click.option(
    "--parallel",
    "-p",
    type=click.IntRange(1, 16),
    metavar="N",
    help=f"Send N images at once, each on a connection of its own [default: "
    f"{DEFAULT_PARALLEL} when logged in with a token or client certificate, "
    f"{PASSWORD_PARALLEL} with a password, as each connection then costs the server a "
    "password check].",
)
@click.option(
    "--strip-metadata",
    type=click.Choice(["gps", "all"]),
    help="Remove the location (gps) or all metadata (all: EXIF, XMP, IPTC, comments; "
    "the colour profile and orientation stay) here, before encryption, without "
    "re-encoding pixels. The HMAC shown, and the image stored, are then of the "
    "stripped bytes, not of the file on disk.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per stored image, with its checked receipt (signature, "
    "scheme, the server certificate's SHA-256) for checking it later; no bars.",
)
@click.option(
    "--no-resume",
    is_flag=True,
    help="Keep no resume record: an upload that is cut starts again from the beginning "
    "(with a new key) when retried or sent again. [default: images of 8 MiB or more "
    "are resumable; see below]",
)
@click.option(
    "--quiet", "-q", is_flag=True, help="Print nothing but errors (the exit status says the rest)."
)
def send(
    paths: tuple[Path, ...],
    parallel: int | None,
    strip_metadata: StripMode | None,
    as_json: bool,
    no_resume: bool,
    quiet: bool,
    **connection: Any,
) -> None:
    """Send images, and the images in folders (recursively), end-to-end encrypted; print
    each checked receipt.

    Files in folders that are empty or not images (by their first bytes) are skipped
    and listed; a file named here is sent whatever it is, and the server decides.
    Every path is checked, and each image's size against the server's limit, before
    anything is sent. On a terminal, bars show each file and the total with speed and
    time left; elsewhere, a line per file. For each image: the HMAC computed here
    ("HMAC of image on client side", the server logs the same) and the server's
    signed receipt, which is checked (signature, HMAC, size, owner).

    Network errors are retried with back-off; a large image that was cut off goes on
    where it stopped, now or when the same command is run again (see "Resuming").
    """
    from imgshare.cli.progress import SendOutput, choose_mode
    from imgshare.client.api import plan_send

    plan = plan_send(paths)
    if plan.problems:
        for path, why in plan.problems:
            click.echo(f"imgshare: error: {escape(str(path))}: {escape(why)}", err=True)
        count = len(plan.problems)
        raise ImgshareError(
            f"nothing sent: {count} path(s) cannot be sent; correct them or leave them out"
        )
    mode = choose_mode(as_json=as_json, quiet=quiet)
    if not plan.items:
        output = SendOutput(mode, 1)
        for path, why in plan.skipped:
            output.note_skipped(path, why)
        raise ImgshareError("nothing to send: no images among the files given")
    login = resolve_login(**connection)
    workers = parallel or (PASSWORD_PARALLEL if login.method == "password" else DEFAULT_PARALLEL)
    output = SendOutput(mode, workers)
    _send(plan, login, workers, strip_metadata, output, resume=not no_resume)


def _send(
    plan: SendPlan,
    login: Login,
    workers: int,
    strip: StripMode | None,
    output: SendOutput,
    *,
    resume: bool,
) -> None:
    from imgshare.client.api import Client

    client = Client.from_sessions(lambda: open_login(login), login.server)
    with client:
        # Connect and log in first: a password prompt must come before the bars, and
        # the server's size limit before any upload.
        client.info()
        try:
            with output:
                results = client.send(
                    plan,
                    progress=output,
                    parallel=workers,
                    strip_metadata=strip,
                    sha256=output.mode == "json",
                    resume=resume,
                )
        except KeyboardInterrupt:
            # One clear line and the conventional status of a SIGINT; raised as
            # SystemExit because click would turn a KeyboardInterrupt into "aborted".
            tally = output.tally
            if tally.interrupted_resumable:
                kept = (
                    f"the server keeps what it made durable of {tally.interrupted_resumable} "
                    "of them: run the same command again to resume"
                )
            else:
                kept = "and the server keeps nothing of them"
            click.echo(
                f"imgshare: interrupted: {tally.sent} of {len(plan.items)} image(s) sent and "
                f"stored; the uploads under way were stopped, {kept}",
                err=True,
            )
            raise SystemExit(130) from None
    failed = sum(result.state == "failed" for result in results)
    if output.mode != "quiet":
        click.echo(output.tally.summary(), err=True)
    if failed:
        raise ImgshareError(f"{failed} of {len(plan.items)} image(s) not sent")
