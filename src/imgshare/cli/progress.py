"""How `imgshare send` shows its work, from the API's ``Progress`` reports.

Four ways, chosen by `send`:

- **bars** (stderr is a terminal): rich progress bars on stderr, one per file being
  sent and one overall, with speed and time left; each finished file leaves a line
  above the bars. Receipts go to stdout: above the bars when stdout is the same
  terminal, straight to it when it is redirected (so `send > receipts.txt` works).
- **plain** (not a terminal: a pipe, a file, a CI log): a line per file as it ends,
  receipts on stdout, problems on stderr, nothing redrawn.
- **json**: one JSON object per stored image on stdout, as each is stored, with what
  is needed to check its receipt later; problems as text on stderr.
- **quiet**: nothing but errors.

Reports come from the API's worker threads; every method here takes one lock, so
lines never interleave. Names are escaped (``imgshare.safetext``) and never read as
rich markup.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import click

from imgshare.safetext import escape
from imgshare.units import human_size

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from imgshare.client.api import Progress
    from imgshare.client.session import UploadResult

Mode = Literal["bars", "plain", "json", "quiet"]


def choose_mode(*, as_json: bool, quiet: bool) -> Mode:
    """``--json`` wins, then ``--quiet``; otherwise bars on a terminal, else plain."""
    if as_json:
        return "json"
    if quiet:
        return "quiet"
    return "bars" if sys.stderr.isatty() else "plain"


def receipt_record(path: Path, result: UploadResult, resumed: int = 0) -> dict[str, Any]:
    """The JSON of one stored image: the receipt's fields, the signature and its
    scheme, the whole receipt as hex (``receipt``: what the signature covers, after
    the fixed prefix of docs/protocol.md section 7.5), and the SHA-256 of the
    certificate that signed it: enough to check the receipt later. ``resumed_from``:
    the bytes the server already had when the last attempt began (0: sent whole)."""
    from imgshare.cli.client import iso

    receipt = result.receipt
    body = receipt.body
    record: dict[str, Any] = {
        "file": str(path),
        "id": result.id,
        "name": result.name,
        "size": result.size,
        "hmac": result.hmac,
        "sha256": result.sha256,
        "owner": body.username,
        "server_time": iso(result.server_time_ms),
        "server_time_ms": result.server_time_ms,
        "upload_id": body.upload_id.hex(),
        "header_sha256": body.header_sha256.hex(),
        "scheme": receipt.scheme,
        "signature": receipt.signature.hex(),
        "receipt": body.encode().hex(),
        "server_certificate_sha256": hashlib.sha256(result.server_certificate).hexdigest(),
        "resumed_from": resumed,
    }
    return record


def receipt_lines(path: Path, result: UploadResult) -> list[str]:
    """The two lines a person reads: the HMAC to compare with the server's log, and
    where it was stored."""
    from imgshare.cli.client import iso

    return [
        f"HMAC of image on client side: {result.hmac}",
        f"{escape(str(path))}: stored as {result.id} ({result.size} bytes, "
        f"{human_size(result.size)}) at {iso(result.server_time_ms)}; signed receipt "
        "checked, server HMAC matches",
    ]


@dataclass
class Tally:
    """What happened, for the summary line."""

    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    interrupted: int = 0
    #: Of those interrupted, the ones with a resume record: sending them again resumes.
    interrupted_resumable: int = 0
    bytes_sent: int = 0

    def summary(self) -> str:
        """``sent 3 images (1.2 MiB) in 0.4 s, 3.0 MiB/s; 2 skipped``."""
        took = max(time.monotonic() - self.started, 1e-6)
        images = "image" if self.sent == 1 else "images"
        seconds = f"{took:.1f}" if took >= 1 else f"{took:.2f}"  # never "in 0.0 s"
        text = f"sent {self.sent} {images} ({human_size(self.bytes_sent)}) in {seconds} s"
        if self.bytes_sent:
            text += f", {human_size(self.bytes_sent / took)}/s"
        if self.failed:
            text += f"; {self.failed} failed"
        if self.skipped:
            text += f"; {self.skipped} skipped"
        return text


class SendOutput:
    """Receives ``Progress`` reports (from any thread) and shows them; a context
    manager that starts and stops the bars."""

    def __init__(self, mode: Mode, parallel: int) -> None:
        self.mode = mode
        self.tally = Tally()
        self._lock = threading.RLock()
        self._bars: RichProgress | None = None
        self._overall: TaskID | None = None
        self._tasks: dict[Path, TaskID] = {}
        self._files_total = 0
        self._bytes_total = 0
        self._sizes: dict[Path, int] = {}
        self._sent: dict[Path, int] = {}
        self._done_files = 0
        self._stdout_is_terminal = sys.stdout.isatty()
        self._parallel = parallel
        self._resumed: dict[Path, int] = {}  # the resume already announced, per file

    # -- lines -----------------------------------------------------------------------

    def out(self, line: str) -> None:
        """A line of results, on stdout (above the bars when they share a terminal)."""
        with self._lock:
            if self._bars is not None and self._stdout_is_terminal:
                self._bars.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                click.echo(line)

    def err(self, line: str) -> None:
        """A line for people, on stderr (above the bars)."""
        with self._lock:
            if self._bars is not None:
                self._bars.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                click.echo(line, err=True)

    def note_skipped(self, path: Path, why: str) -> None:
        self.tally.skipped += 1
        if self.mode != "quiet":
            self.err(f"imgshare: skipped {escape(str(path))}: {escape(why)}")

    # -- reports ---------------------------------------------------------------------

    def __call__(self, update: Progress) -> None:
        with self._lock:
            if update.state == "queued":
                self._files_total += 1
                self._grow(update.path, update.total)
                if self._bars is not None and self._overall is not None:
                    self._bars.update(self._overall, description=self._overall_text())
                return
            if update.state == "skipped":
                self.note_skipped(update.path, update.error or "")
                return
            if update.total:
                self._grow(update.path, update.total)
            if update.state == "sending" and update.resumed:
                self._note_resumed(update)
            if update.state in ("connecting", "sending", "verifying"):
                self._show_active(update)
            elif update.state == "done":
                self._done(update)
            elif update.state == "failed":
                self._failed(update)

    def _note_resumed(self, update: Progress) -> None:
        """Say once per attempt that an upload goes on where the server kept it."""
        if self._resumed.get(update.path) == update.resumed:
            return
        self._resumed[update.path] = update.resumed
        self._grow(update.path, update.total)
        if self.mode in ("bars", "plain"):
            self.err(
                f"imgshare: resuming {escape(str(update.path))} at "
                f"{human_size(update.resumed)} of {human_size(update.total)} (the part the "
                "server kept is not sent again)"
            )

    def _grow(self, path: Path, total: int) -> None:
        """Track a file's size (it changes once metadata is stripped). What a resumed
        upload does not send again is no part of the overall bar's work."""
        total = max(0, total - self._resumed.get(path, 0))
        self._bytes_total += total - self._sizes.get(path, 0)
        self._sizes[path] = total
        if self._bars is not None and self._overall is not None:
            self._bars.update(self._overall, total=max(self._bytes_total, 1))

    def _advance(self, path: Path, sent: int) -> None:
        sent = max(0, sent - self._resumed.get(path, 0))
        before = self._sent.get(path, 0)
        self._sent[path] = sent
        if self._bars is not None and self._overall is not None:
            self._bars.advance(self._overall, sent - before)

    def _show_active(self, update: Progress) -> None:
        self._advance(update.path, update.sent)
        if self._bars is None:
            return
        from rich.markup import escape as plain

        label = {"connecting": "connecting", "verifying": "checking"}.get(update.state, "")
        description = plain(_short(escape(update.name), 28))
        if label:
            description += f" [dim]({label})[/dim]"
        task = self._tasks.get(update.path)
        if task is None:  # a resumed one starts where it is, not with a burst of speed
            task = self._bars.add_task(
                description, total=max(update.total, 1), completed=update.resumed
            )
            self._tasks[update.path] = task
        self._bars.update(
            task, completed=update.sent, total=max(update.total, 1), description=description
        )

    def _finish_task(self, update: Progress) -> None:
        task = self._tasks.pop(update.path, None)
        if self._bars is not None and task is not None:
            self._bars.remove_task(task)
        self._done_files += 1
        if self._bars is not None and self._overall is not None:
            self._bars.update(self._overall, description=self._overall_text())

    def _done(self, update: Progress) -> None:
        result = update.result
        assert result is not None
        self._advance(update.path, update.total)
        self.tally.sent += 1
        self.tally.bytes_sent += result.size
        self._finish_task(update)
        if self.mode == "json":
            self.out(json.dumps(receipt_record(update.path, result, update.resumed)))
        elif self.mode != "quiet":
            for line in receipt_lines(update.path, result):
                self.out(line)

    def _failed(self, update: Progress) -> None:
        from imgshare.client.api import INTERRUPTED

        if update.error == INTERRUPTED:
            # Ctrl-C: one line says it all (imgshare.cli.send), and the bars stay
            # where they were.
            self.tally.interrupted += 1
            self.tally.interrupted_resumable += update.resumable
            return
        # What was sent of it no longer counts towards the total.
        self._advance(update.path, 0)
        self._grow(update.path, 0)
        self.tally.failed += 1
        self._finish_task(update)
        self.err(f"imgshare: error: {escape(str(update.path))}: {escape(update.error or '')}")

    def _overall_text(self) -> str:
        return f"[bold]total[/bold] {self._done_files}/{self._files_total} files"

    # -- the bars --------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self.mode == "bars":
            self._start_bars()
        self.tally = Tally()
        return self

    def _start_bars(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            ProgressColumn,
            Task,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class SpeedColumn(ProgressColumn):
            """Speed in the binary units of the sizes (rich's own column is decimal)."""

            def render(self, task: Task) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{human_size(speed)}/s" if speed else "", style="progress.data.speed")

        columns = (
            TextColumn("{task.description}"),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            SpeedColumn(),
            TimeRemainingColumn(),
        )
        bars = Progress(
            *columns,
            console=Console(stderr=True),
            redirect_stdout=False,
            redirect_stderr=False,
            expand=True,
        )
        with self._lock:
            self._bars = bars
            self._overall = bars.add_task(self._overall_text(), total=max(self._bytes_total, 1))
        bars.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            bars, self._bars = self._bars, None
        if bars is not None:
            for task in list(self._tasks.values()):
                bars.remove_task(task)
            self._tasks.clear()
            bars.stop()


def _short(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters, so both ends show."""
    if len(text) <= width:
        return text.ljust(width)
    keep = width - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2 :]
