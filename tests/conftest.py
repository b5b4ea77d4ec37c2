"""Shared test fixtures."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgshare import pki
from imgshare.store.catalog import SQLCatalog, SQLiteCatalog

# Real servers for the tests: SeaweedFS (S3), PostgreSQL (the shared catalog).
pytest_plugins = ["services.plugin", "services.postgres"]

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
def catalog_kind(request: pytest.FixtureRequest) -> str:
    """The database behind ``catalog``: SQLite, unless a module overrides this fixture
    or a test parametrises it (indirectly) with ``services.postgres.CATALOG_KINDS``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def catalog_opener(
    catalog_kind: str, catalog_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], SQLCatalog]]:
    """Opens catalogs on this test's own database (the SQLite file ``catalog_path``,
    or a PostgreSQL database of its own), a new catalog object per call, as another
    process would; all closed at teardown."""
    open_one: Callable[[], SQLCatalog]
    if catalog_kind == "postgres":
        from imgshare.store.postgres import PostgresCatalog

        url = request.getfixturevalue("postgres_url")
        open_one = lambda: PostgresCatalog(url)  # noqa: E731
    else:
        open_one = lambda: SQLiteCatalog(catalog_path)  # noqa: E731
    opened: list[SQLCatalog] = []

    def opener() -> SQLCatalog:
        opened.append(open_one())
        return opened[-1]

    yield opener
    for each in opened:
        each.close()


@pytest.fixture
def catalog(catalog_opener: Callable[[], SQLCatalog]) -> SQLCatalog:
    """A fresh catalog (SQLite in ``tmp_path``; see ``catalog_kind``), closed at teardown."""
    return catalog_opener()
