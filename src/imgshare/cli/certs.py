"""`imgshare certs`: the certificate generator (filled in by the foundation issue)."""

from __future__ import annotations

import click


@click.group()
def certs() -> None:
    """Make the private CA, server and client certificates (PEM)."""
