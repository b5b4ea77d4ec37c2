"""pytest fixtures for real servers started by the tests themselves (issue 13).

Registered in tests/conftest.py (``pytest_plugins``). A server starts only when a test
asks for its fixture, once per session, and is killed at the end. A server that
cannot be started fails the tests that need it, with the reason; it never skips
them silently.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator

import pytest

from imgshare.store.s3 import S3Config
from services.seaweedfs import REGION, SeaweedFS, ServiceError


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """A throwaway SeaweedFS on 127.0.0.1 with one bucket and one identity."""
    server = SeaweedFS()
    failure = None
    try:
        server.start()
    except ServiceError as exc:
        server.stop()
        failure = f"cannot start SeaweedFS for the S3 tests: {exc}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_config(seaweedfs: SeaweedFS) -> S3Config:
    """How to reach the session's bucket (no prefix: tests add their own)."""
    return S3Config(
        bucket=seaweedfs.bucket,
        endpoint_url=seaweedfs.endpoint_url,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        region=REGION,
    )


@pytest.fixture
def s3_test_config(s3_config: S3Config) -> S3Config:
    """The session's bucket under a prefix of this test's own, so tests never see
    each other's objects or uploads."""
    return dataclasses.replace(s3_config, prefix=f"test-{secrets.token_hex(6)}")
