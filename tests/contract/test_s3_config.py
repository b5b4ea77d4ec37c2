"""``S3Config``: the object store URL and the standard AWS variables (no server)."""

from __future__ import annotations

import pytest

from imgshare.errors import ConfigError
from imgshare.store.s3 import S3BlobStore, S3Config

ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret",
    "AWS_REGION": "eu-west-3",
}


def test_from_url_reads_the_standard_variables() -> None:
    config = S3Config.from_url("s3://images/imgshare/prod", ENV)
    assert config == S3Config(
        bucket="images",
        prefix="imgshare/prod",
        endpoint_url="http://127.0.0.1:8333",
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI-secret",
        region="eu-west-3",
    )
    assert config.key_prefix() == "imgshare/prod/objects/"
    assert config.url == "s3://images/imgshare/prod"


def test_defaults_and_overrides() -> None:
    config = S3Config.from_url("s3://images", {})
    assert (config.prefix, config.endpoint_url, config.region) == ("", None, "us-east-1")
    assert config.key_prefix() == "objects/"
    assert (config.access_key, config.secret_key) == (None, None)
    assert S3Config.from_url("s3://images/", {"AWS_DEFAULT_REGION": "ap-south-1"}).region == (
        "ap-south-1"
    )
    chosen = S3Config.from_url("s3://images", ENV, access_key="other", region="us-west-2")
    assert (chosen.access_key, chosen.region) == ("other", "us-west-2")
    assert chosen.secret_key == ENV["AWS_SECRET_ACCESS_KEY"]


def test_the_secret_is_not_in_the_repr() -> None:
    config = S3Config.from_url("s3://images/p", ENV)
    assert ENV["AWS_SECRET_ACCESS_KEY"] not in repr(config)
    assert ENV["AWS_SECRET_ACCESS_KEY"] not in repr(S3BlobStore(config))


@pytest.mark.parametrize(
    "url",
    [
        "images/prefix",
        "http://images/prefix",
        "s3://",
        "s3://user:secret@images/p",
        "s3://images:9000/p",
        "s3://images/p?versionId=1",
        "s3://Images/p",
        "s3://im/p",
        "s3://images/a//b",
        "s3://images/a/../b",
        "s3://images/a/./b",
        "s3://images/a b",
        "s3://images/ünï",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        S3Config.from_url(url, {})


@pytest.mark.parametrize(
    "endpoint",
    ["ftp://host", "http://", "http://user:pw@host", "http://host/path", "http://host:99999"],
)
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        S3Config.from_url("s3://images", {"AWS_ENDPOINT_URL": endpoint})


def test_a_store_needs_credentials() -> None:
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        S3BlobStore(S3Config.from_url("s3://images/p", {"AWS_ENDPOINT_URL": "http://h:1"}))
