"""Several ``imgshare serve`` nodes on 127.0.0.1 behind a real haproxy (issue 13).

A ``Cluster`` is what docs/operations.md ("Several nodes") describes, shrunk onto one
machine: N nodes, each ``imgshare serve --config nodeK.toml`` with a data folder of
its own (certificates issued by one shared CA, its lock, its scratch files), sharing
one PostgreSQL database (``catalog_url``), one SeaweedFS bucket prefix
(``object_store_url``), one inbox (a folder all of them see, or a bucket prefix) and
one storage key (``IMGSHARE_STORAGE_KEY``); and Debian's haproxy in TCP mode in front,
with the configuration the docs show (``haproxy_config``, in tests/services/haproxy.py:
the bench's ``backends`` scenario uses it too).

Each node issues its own server certificate from the shared CA, so a test tells
which node a connection reached by the certificate it was shown (``node_of``):
through the balancer, connection after connection goes round the nodes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import (
    CHEAP_HASHER,
    HOST,
    PASSWORD,
    RawClient,
    ServeProcess,
)

from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier
from imgshare.protocol import events as ev
from imgshare.server.accounts import Accounts
from imgshare.server.credentials import Tokens
from imgshare.store.catalog import now_ms
from imgshare.store.postgres import PostgresCatalog
from imgshare.store.s3 import S3Config
from services.haproxy import Haproxy


@dataclass
class Node:
    """One ``imgshare serve`` of the cluster."""

    name: str
    config: Path
    data: Path
    env: dict[str, str]
    serve: ServeProcess | None = None
    port: int = 0

    def start(self) -> None:
        self.serve = ServeProcess("--config", self.config, cwd=self.data.parent, env=self.env)

    def wait_listening(self, timeout: float = 30.0) -> int:
        assert self.serve is not None
        match = self.serve.wait_for(r"listening on 127\.0\.0\.1:(\d+)", timeout=timeout)
        self.port = int(match.group(1))
        return self.port

    @property
    def certificate(self) -> bytes:
        """This node's server certificate, DER (tells connections apart)."""
        cert = pki.load_certificate(self.data / "certs" / "server.pem")
        from cryptography.hazmat.primitives import serialization

        return cert.public_bytes(serialization.Encoding.DER)

    @property
    def lines(self) -> list[str]:
        return self.serve.lines if self.serve is not None else []

    def kill(self) -> None:
        """A crash of the whole node: the supervisor is stopped first (so that it
        cleans up after nobody), then it and its workers are killed."""
        assert self.serve is not None
        supervisor = self.serve.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGSTOP)
            for pid in _children(supervisor):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.kill(supervisor, signal.SIGKILL)
        self.serve.close()
        self.serve = None

    def stop(self) -> None:
        if self.serve is not None:
            if self.serve.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.serve.terminate(timeout=20)
            self.serve.close()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@dataclass
class Cluster:
    """N nodes, their shared catalog, bucket prefix and inbox, and the balancer."""

    folder: Path
    catalog_url: str
    s3: S3Config
    s3_env: dict[str, str]
    inbox_location: str
    storage_key: str
    nodes: list[Node] = field(default_factory=list)
    balancer: Haproxy | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.folder / "ca" / "ca.pem"

    @property
    def object_store_url(self) -> str:
        return f"s3://{self.s3.bucket}/{self.s3.prefix}"

    def context(self) -> ssl.SSLContext:
        return tls.create_client_context(self.ca)

    def verifier(self) -> Any:
        return ca_verifier([pki.load_certificate(self.ca)], HOST)

    # -- clients ------------------------------------------------------------------------

    def session(self, user: str, port: int | None = None) -> ClientSession:
        """A session logged in as ``user`` (by token), through the balancer unless
        ``port``."""
        return ClientSession.connect(
            HOST,
            port or self.lb_port,
            self.context(),
            verifier=self.verifier(),
            timeout=30,
            token=self.tokens[user],
        )

    def raw(self, user: str | None = None, port: int | None = None) -> RawClient:
        """A raw client (logged in as ``user`` by token, if given)."""
        raw = RawClient.connect(
            (HOST, port or self.lb_port), self.context(), self.verifier(), timeout=30
        )
        if user is not None:
            raw.send(ev.TokenLogin(self.tokens[user].encode()))
            answer = raw.receive()
            assert isinstance(answer, ev.LoginOk), answer
        return raw

    def node_of(self, client: ClientSession | RawClient) -> Node:
        """The node a connection reached, by the certificate it was shown."""
        sock = client.sock if isinstance(client, RawClient) else client._sock
        der = sock.getpeercert(binary_form=True)
        for node in self.nodes:
            if node.certificate == der:
                return node
        raise AssertionError("a certificate of no node")

    def session_on_another_node(self, user: str, than: Node) -> tuple[ClientSession, Node]:
        """Through the balancer, a session on a node other than ``than``."""
        for _ in range(3 * len(self.nodes)):
            session = self.session(user)
            node = self.node_of(session)
            if node is not than:
                return session, node
            session.close()
        raise AssertionError("the balancer kept choosing the same node")

    @property
    def lb_port(self) -> int:
        assert self.balancer is not None
        return self.balancer.port

    # -- the shared parts, seen directly --------------------------------------------------

    def catalog(self) -> PostgresCatalog:
        return PostgresCatalog(self.catalog_url, pool_size=2)

    def add_users(self, *names: str, password: str = PASSWORD) -> None:
        """Users with cheap password hashes, and an API token each: sessions log in
        with the token (one lookup), so that no test waits for argon2id."""
        with self.catalog() as catalog:
            accounts = Accounts(catalog, hasher=CHEAP_HASHER)
            for name in names:
                user = accounts.add_user(name, password)
                _, secret = Tokens(catalog).create(user, "tests", now_ms(), 0)
                self.tokens[name] = secret.decode()

    def bucket(self) -> Any:
        """A botocore client of the test's own, to look into the bucket."""
        import botocore.config
        import botocore.session

        return botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.s3.endpoint_url,
            aws_access_key_id=self.s3.access_key,
            aws_secret_access_key=self.s3.secret_key,
            region_name=self.s3.region,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def keys(self, area: str = "objects") -> set[str]:
        """Keys under the prefix's ``area`` (objects, inbox)."""
        prefix = f"{self.s3.prefix}/{area}/"
        found: set[str] = set()
        for page in (
            self.bucket()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.s3.bucket, Prefix=prefix)
        ):
            found |= {entry["Key"][len(prefix) :] for entry in page.get("Contents", [])}
        return found

    def object_ids(self) -> set[str]:
        return {key.rsplit("/", 1)[-1] for key in self.keys("objects")}

    def multipart_uploads(self) -> list[str]:
        answer = self.bucket().list_multipart_uploads(
            Bucket=self.s3.bucket, Prefix=f"{self.s3.prefix}/"
        )
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    def inbox_files(self) -> set[str]:
        """``user/name`` of every inbox copy (the shared folder or the bucket)."""
        if self.inbox_location.startswith("s3://"):
            return self.keys("inbox")
        root = Path(self.inbox_location)
        return {
            f"{p.parent.name}/{p.name}"
            for p in root.glob("*/*")
            if p.is_file() and not p.parent.name.startswith(".")
        }

    def inbox_temp_files(self) -> list[Path]:
        if self.inbox_location.startswith("s3://"):
            return []
        return sorted((Path(self.inbox_location) / ".tmp").glob("*"))

    # -- nodes --------------------------------------------------------------------------

    def add_node(self, **settings: Any) -> Node:
        index = len(self.nodes) + 1
        data = self.folder / f"node{index}"
        (data / "certs").mkdir(parents=True)
        for name in ("ca.pem", "ca.key"):  # the node issues its own server certificate
            shutil.copy2(self.folder / "ca" / name, data / "certs" / name)
        values: dict[str, Any] = {
            "data": str(data),
            "host": HOST,
            "port": 0,
            "workers": 1,
            "catalog_url": self.catalog_url,
            "object_store_url": self.object_store_url,
            "inbox_location": self.inbox_location,
            "catalog_pool": 4,
            **settings,
        }
        config = self.folder / f"node{index}.toml"
        config.write_text("[server]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))
        env = {**self.s3_env, "IMGSHARE_STORAGE_KEY": self.storage_key}
        node = Node(f"node{index}", config, data, env)
        self.nodes.append(node)
        return node

    def start(self, count: int, **settings: Any) -> None:
        """Start ``count`` nodes together, then the balancer in front of them."""
        nodes = [self.add_node(**settings) for _ in range(count)]
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_listening()
        self.balancer = Haproxy(self.folder, [node.port for node in self.nodes])

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for node in self.nodes:
            node.stop()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def cluster(
    folder: Path,
    catalog_url: str,
    s3: S3Config,
    s3_env: dict[str, str],
    *,
    inbox: str = "folder",
) -> Iterator[Cluster]:
    """A cluster's shared parts (CA, key, inbox); nodes come with ``start``."""
    folder.mkdir(parents=True, exist_ok=True)
    pki.init_certificates(folder / "ca")
    inbox_location = (
        f"s3://{s3.bucket}/{s3.prefix}" if inbox == "s3" else str(folder / "shared-inbox")
    )
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    made = Cluster(folder, catalog_url, s3, s3_env, inbox_location, key)
    try:
        yield made
    finally:
        made.stop()


def wait_for_line(node: Node, pattern: str, timeout: float = 15.0) -> str:
    assert node.serve is not None
    return node.serve.wait_for(pattern, timeout=timeout).string


def settle(seconds: float) -> None:
    time.sleep(seconds)
