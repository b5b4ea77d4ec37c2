"""Shared test fixtures."""

import pytest

from imgshare import pki

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
