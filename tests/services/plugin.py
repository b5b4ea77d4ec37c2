"""pytest fixtures for real servers started by the tests themselves (issue 13).

Registered in tests/conftest.py (``pytest_plugins``). A server starts only when a test
asks for its fixture, once per session, and is killed at the end. A server that
cannot be started fails the tests that need it, with the reason; it never skips
them silently.

Two S3 servers: SeaweedFS (every run) and Ceph's radosgw (opt-in: the ``radosgw``
marker, deselected by default; ``make test-radosgw``). ``s3_test_config`` reaches
SeaweedFS unless a test parametrises ``s3_server`` (indirectly) with
``services.radosgw.S3_SERVERS``, which runs it against both.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator

import pytest

from imgshare.store.s3 import S3Config
from services.base import started
from services.radosgw import Radosgw
from services.seaweedfs import REGION, SeaweedFS


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """A throwaway SeaweedFS on 127.0.0.1 with one bucket and one identity."""
    server = started(SeaweedFS(), "SeaweedFS for the S3 tests")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_config(seaweedfs: SeaweedFS) -> S3Config:
    """How to reach the session's bucket (no prefix: tests add their own)."""
    return bucket_of(seaweedfs)


@pytest.fixture(scope="session")
def radosgw() -> Iterator[Radosgw]:
    """A throwaway single-node Ceph cluster with radosgw on 127.0.0.1, one bucket and
    one S3 user (tests marked ``radosgw`` only).

    It serves HTTPS, with a self-signed certificate that AWS_CA_BUNDLE names for the
    session: SeaweedFS covers plain http, radosgw the way botocore sends bodies over
    TLS (a checksum trailer unless one is given: docs/operations.md)."""
    server = started(Radosgw(tls=True), "Ceph radosgw for the S3 tests")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_CA_BUNDLE", str(server.ca_path))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def radosgw_config(radosgw: Radosgw) -> S3Config:
    """How to reach radosgw's bucket (no prefix: tests add their own)."""
    return bucket_of(radosgw)


def bucket_of(server: SeaweedFS | Radosgw) -> S3Config:
    """The S3 settings of ``server``'s bucket and identity."""
    return S3Config(
        bucket=server.bucket,
        endpoint_url=server.endpoint_url,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=REGION,
    )


@pytest.fixture
def s3_server(request: pytest.FixtureRequest) -> str:
    """Which S3 server ``s3_test_config`` reaches: "seaweedfs" unless parametrised."""
    return str(getattr(request, "param", "seaweedfs"))


def s3_test_config_of(request: pytest.FixtureRequest, server: str) -> S3Config:
    """The bucket of ``server`` ("seaweedfs" or "radosgw", started if need be) under a
    prefix of this test's own, so tests never see each other's objects or uploads."""
    base: S3Config = request.getfixturevalue(
        {"seaweedfs": "s3_config", "radosgw": "radosgw_config"}[server]
    )
    return dataclasses.replace(base, prefix=f"test-{secrets.token_hex(6)}")


@pytest.fixture
def s3_test_config(s3_server: str, request: pytest.FixtureRequest) -> S3Config:
    """The bucket of ``s3_server`` under a prefix of this test's own."""
    return s3_test_config_of(request, s3_server)
