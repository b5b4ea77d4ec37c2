"""`imgshare audit`: the security events the server keeps in its catalog.

Read-only, and it works while the server runs: like ``imgshare user``, it takes no
lock on the data folder and reads the catalog (SQLite lets readers and the server's
writers go on side by side, WAL; so does PostgreSQL). ``--config`` finds the catalog
as the server does, also the one that several nodes share.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from imgshare.cli.users import existing_catalog, server_settings, utc_time
from imgshare.safetext import escape

#: Every event the server and the admin commands record (docs/operations.md).
EVENTS = (
    "login",
    "login_failed",
    "registered",
    "password_changed",
    "password_reset",
    "token_created",
    "token_revoked",
    "invitation_created",
    "share_granted",
    "share_revoked",
    "share_expired",
    "image_deleted",
    "user_removed",
)
MAX_LIMIT = 10_000_000
_HEADINGS = ("TIME (UTC)", "EVENT", "USER", "NETWORK", "DETAILS")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _detail(key: str, value: Any) -> str:
    """``key=value`` made safe to show: a time (a key ending in ``_ms``) in UTC, 0 as
    "never"; text escaped, and quoted if it holds a space, '=' or '"'."""
    if key.endswith("_ms") and isinstance(value, int) and not isinstance(value, bool):
        shown = _iso(value)[:-5] + "Z" if value else "never"
        return f"{escape(key[:-3])}={shown}"
    if not isinstance(value, str):
        return f"{escape(key)}={json.dumps(value)}"  # ASCII: JSON escapes the rest
    text = escape(value)
    if not text or any(c.isspace() or c in '="' for c in text):
        text = '"' + text.replace('"', '\\"') + '"'
    return f"{escape(key)}={text}"


def _details(detail: dict[str, Any]) -> str:
    return " ".join(_detail(key, detail[key]) for key in sorted(detail))


@click.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The server's data folder. [default: the --config file's, IMGSHARE_DATA, or ./data]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The server's settings file (TOML), to find its catalog as it does (with "
    "several nodes: catalog_url).",
)
@click.option("--user", "user_name", metavar="NAME", help="Only the events that concern this user.")
@click.option(
    "--event",
    type=click.Choice(EVENTS),
    metavar="EVENT",
    help="Only the events of this kind: login, login_failed, registered, token_created... "
    "(docs/operations.md lists them all).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    metavar="N",
    default=100,
    show_default=True,
    help="Show the newest N events that match.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(
    data: Path | None,
    config_file: Path | None,
    user_name: str | None,
    event: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the audit trail: logins, failed logins, registrations, tokens, shares,
    deletions, password resets, removed users; oldest first.

    Names are shown as they were given, with control characters escaped. Works while
    the server runs.
    """
    with existing_catalog(server_settings(config_file, data)) as catalog:
        events = catalog.audit_events(user_name=user_name, event=event, limit=limit + 1)
        exists = user_name is None or catalog.get_user_by_name(user_name) is not None
    more = len(events) > limit
    events = events[-limit:]
    if as_json:
        for record in events:
            line = {
                "id": record.id,
                "time": _iso(record.time_ms),
                "time_ms": record.time_ms,
                "event": record.event,
                "user": record.user_name,
                "network": record.network,
                "detail": record.detail,
            }
            click.echo(json.dumps(line, sort_keys=True))
    elif events:
        rows = [
            (
                utc_time(record.time_ms),
                escape(record.event),
                escape(record.user_name) if record.user_name else "-",
                escape(record.network) if record.network else "-",
                _details(record.detail),
            )
            for record in events
        ]
        widths = [max(len(row[i]) for row in [_HEADINGS, *rows]) for i in range(4)]
        for row in [_HEADINGS, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            click.echo("  ".join([*cells, row[4]]).rstrip())
    if not events:
        wanted = " and ".join(
            part
            for part in (
                f"user '{escape(user_name)}'" if user_name is not None else "",
                f"event {event}" if event else "",
            )
            if part
        )
        message = "no audit events" + (f" for {wanted}" if wanted else "")
        if not exists:
            message += f" (and no user named '{escape(user_name or '')}' now)"
        click.echo(message, err=True)
    elif more:
        click.echo(f"(the newest {limit} events; --limit N shows more)", err=True)
