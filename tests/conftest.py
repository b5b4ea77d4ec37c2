"""Shared test fixtures."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from imgshare import pki
from imgshare.store.catalog import SQLiteCatalog

pytest_plugins = ["services.plugin"]  # real servers for the tests: SeaweedFS (S3)

# --- certificates from our own generator (foundation issue: imgshare.pki) -------------


@pytest.fixture(scope="session")
def pki_paths(tmp_path_factory: pytest.TempPathFactory) -> pki.CertificatePaths:
    """A CA, a server certificate (localhost, 127.0.0.1, ::1) and client "alice".

    Shared by the whole session: treat the files as read-only.
    """
    directory = tmp_path_factory.mktemp("pki")
    paths = pki.init_certificates(directory)
    pki.create_client_certificate(directory, "alice")
    return paths


# --- end of certificate fixtures ------------------------------------------------------


# --- a catalog of its own for each test ----------------------------------------------


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    return tmp_path / "catalog.sqlite"


@pytest.fixture
def catalog(catalog_path: Path) -> Iterator[SQLiteCatalog]:
    """A fresh SQLite catalog in ``tmp_path``, closed at teardown."""
    with SQLiteCatalog(catalog_path) as opened:
        yield opened
