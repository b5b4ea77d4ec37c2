"""``imgshare migrate``: an embedded data folder into PostgreSQL + S3, then served by a node.

The source is made by the real server (in this process): users, images with inbox
copies, a share, a token, a removed user (so that SQLite's AUTOINCREMENT is past the
highest id left), a deleted image. The target is a new PostgreSQL database, a prefix
of the session's SeaweedFS bucket and an inbox folder. The command runs as a user
runs it; a node then serves what was copied.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from pathlib import Path
from typing import Any

import pytest
from helpers import PASSWORD, imgshare, noise_image, start_server
from multinode import Cluster

from imgshare.store.s3 import S3Config
from services.postgres import PostgresCluster
from services.seaweedfs import SeaweedFS

pytestmark = [pytest.mark.multinode, pytest.mark.postgres]


def _source(data: Path, tmp_path: Path) -> dict[str, Any]:
    """An embedded data folder with a bit of everything; what a test checks after."""
    server = start_server(data, users=("alice", "bob", "carol"))
    try:
        alice = server.login("alice")
        kept = [
            alice.upload(noise_image(tmp_path / "a.png", "PNG", (64, 64), seed=1), sha256=True),
            alice.upload(noise_image(tmp_path / "b.jpg", "JPEG", (80, 60), seed=2), sha256=True),
        ]
        gone = alice.upload(noise_image(tmp_path / "c.gif", "GIF", (30, 30), seed=3))
        alice.share(kept[0].id, "bob")
        alice.delete(gone.id)
        token = alice.create_token("laptop")
        carol_id = server.accounts.list_users()[-1].id
        server.server.service.store.remove_user("carol")
    finally:
        server.close()
    return {"kept": kept, "token": token, "carol_id": carol_id}


def _target(tmp_path: Path, url: str, s3: S3Config) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        "[server]\n"
        f'data = "{tmp_path / "node"}"\n'
        f'catalog_url = "{url}"\n'
        f'object_store_url = "s3://{s3.bucket}/{s3.prefix}"\n'
        f'inbox_location = "{tmp_path / "shared-inbox"}"\n'
        "port = 0\nworkers = 1\n"
    )
    return config


def test_migrate_copies_verifies_restarts_and_a_node_serves_it(
    tmp_path: Path, postgres: PostgresCluster, seaweedfs: SeaweedFS, s3_config: S3Config
) -> None:
    data = tmp_path / "data"
    made = _source(data, tmp_path)
    url = postgres.new_database(schema=False)
    s3 = dataclasses.replace(s3_config, prefix=f"mig-{secrets.token_hex(4)}")
    config = _target(tmp_path, url, s3)
    env = seaweedfs.env()

    def migrate(*extra: Any) -> Any:
        return imgshare(
            "migrate", "--from", data, "--config", config, *extra, cwd=tmp_path, env=env
        )

    first = migrate()
    assert first.returncode == 0, first.stderr
    assert "objects: 2 copied, 0 there already" in first.stdout
    assert "inbox copies: 2 copied" in first.stdout
    assert "catalog rows: copied" in first.stdout
    assert "the target holds everything the source does" in first.stdout

    again = migrate()  # a second run changes nothing
    assert again.returncode == 0, again.stderr
    assert "objects: 0 copied, 2 there already" in again.stdout
    assert "catalog rows: there already" in again.stdout

    # A run that stopped half-way: an object and a copy never arrived.
    view = Cluster(tmp_path, url, s3, env, str(tmp_path / "shared-inbox"), "")
    lost = made["kept"][1].id
    view.bucket().delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}/objects/{lost[:2]}/{lost}")
    (copy,) = (tmp_path / "shared-inbox" / "alice").glob(f"*-{lost}.jpg")
    copy.unlink()
    check = migrate("--check")
    assert check.returncode == 1
    assert f"object {lost} is missing in the target" in check.stderr
    resumed = migrate()
    assert resumed.returncode == 0, resumed.stderr
    assert "objects: 1 copied, 1 there already" in resumed.stdout
    assert "inbox copies: 1 copied, 1 there already" in resumed.stdout
    deep = migrate("--check", "--deep")
    assert deep.returncode == 0, deep.stderr
    assert "(bytes compared)" in deep.stdout

    # A node on the target serves what was copied, with the source's storage key.
    key = base64.b64encode((data / "storage.key").read_bytes()).decode()
    nodes = Cluster(tmp_path / "cluster", url, s3, env, str(tmp_path / "shared-inbox"), key)
    (tmp_path / "cluster").mkdir()
    from imgshare import pki

    pki.init_certificates(tmp_path / "cluster" / "ca")
    try:
        nodes.start(1)
        nodes.tokens["alice"] = made["token"].secret
        with nodes.session("alice") as session:
            listed = {e.image_id.hex() for e in session.list_images()}
            assert listed == {result.id for result in made["kept"]}
            for result in made["kept"]:
                got = session.download(result.id, tmp_path / f"got-{result.id}")
                assert (got.sha256, got.hmac) == (result.sha256, result.hmac)
        # A new account never gets a removed user's id.
        password = tmp_path / "pw"
        password.write_text(PASSWORD + "\n")
        node_env = {**env, "IMGSHARE_STORAGE_KEY": key}
        added = imgshare(
            "user", "add", "dave", "--config", config, "--password-file", password,
            cwd=tmp_path, env=node_env,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        with nodes.catalog() as catalog:
            dave = catalog.get_user_by_name("dave")
            assert dave is not None and dave.id > made["carol_id"]
            bob = catalog.get_user_by_name("bob")
            assert bob is not None
            assert catalog.readable_image(made["kept"][0].id, bob.id, 0) is not None  # shared
    finally:
        nodes.stop()
        postgres.drop_database(url)


def test_migrate_refuses_another_key_and_a_running_server(
    tmp_path: Path, postgres: PostgresCluster, seaweedfs: SeaweedFS, s3_config: S3Config
) -> None:
    data = tmp_path / "data"
    _source(data, tmp_path)
    url = postgres.new_database(schema=False)
    s3 = dataclasses.replace(s3_config, prefix=f"mig-{secrets.token_hex(4)}")
    config = _target(tmp_path, url, s3)
    env = seaweedfs.env()
    other = tmp_path / "other.key"
    other.write_bytes(secrets.token_bytes(32))
    other.chmod(0o600)
    wrong = imgshare(
        "migrate", "--from", data, "--config", config, "--storage-key-file", other,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "does not open the images" in wrong.stderr
    server = start_server(data)
    try:
        busy = imgshare("migrate", "--from", data, "--config", config, cwd=tmp_path, env=env)
        assert busy.returncode == 1 and "in use by another imgshare server" in busy.stderr
    finally:
        server.close()
    postgres.drop_database(url)
