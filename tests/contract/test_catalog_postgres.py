"""What only the PostgreSQL catalog has to prove: the rules hold across nodes.

The catalog contract itself (every query) runs on SQLite and PostgreSQL alike in
tests/unit/test_store_{catalog,access,hardening,transaction}.py. Here, "a node" is a
process of its own (``spawn``: nothing inherited) with its own ``PostgresCatalog`` and
its own connections to one real database, and each race starts at a barrier: two
nodes racing one user's quota cannot overshoot it, two registrations racing one
invitation add one user, two login attempts racing one throttle get one guess, an
expired share is reported once, one node sweeps at a time (and a node that dies lets
go), nodes that start together migrate once. Then what a single node must do:
errors that name the host and never the password, coming back after the database
dropped its connections, retrying a deadlock, non-durable commits.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from imgshare.errors import ConfigError, QuotaError, StorageError, TryLaterError
from imgshare.server.credentials import secret_hash
from imgshare.store.access import InvitationError
from imgshare.store.catalog import SCHEMA_VERSION, Database, now_ms
from imgshare.store.postgres import CatalogUnreachable, PostgresCatalog
from services.postgres import PostgresCluster
from store_helpers import make_record

pytestmark = pytest.mark.postgres

SPAWN = multiprocessing.get_context("spawn")
WAIT = 30.0
NOW = 1_800_000_000_000


@pytest.fixture
def catalog(postgres_url: str) -> Iterator[PostgresCatalog]:
    with PostgresCatalog(postgres_url) as opened:
        yield opened


def run_nodes(target: Callable[..., None], *args_per_node: tuple[Any, ...]) -> list[Any]:
    """Run ``target(*args, barrier, results)`` in one process per args tuple, all
    released together by ``barrier``; return what each put in ``results``."""
    barrier = SPAWN.Barrier(len(args_per_node), timeout=WAIT)
    results = SPAWN.Queue()
    nodes = [
        SPAWN.Process(target=target, args=(*args, barrier, results), daemon=True)
        for args in args_per_node
    ]
    for node in nodes:
        node.start()
    try:
        answers = [results.get(timeout=WAIT) for _ in nodes]
    finally:
        for node in nodes:
            node.join(WAIT)
            if node.is_alive():
                node.kill()
    assert [node.exitcode for node in nodes] == [0] * len(nodes)
    return answers


# --- the nodes' work (module level: a spawned process imports it) ---------------------


def reserve_and_commit(url: str, user_id: int, tries: int, barrier: Any, results: Any) -> None:
    """Reserve 100 bytes of a 2000-byte quota ``tries`` times; commit every other
    one as a row (the reservation's bytes move to the row in one transaction)."""
    with PostgresCatalog(url) as catalog:
        won = refused = 0
        barrier.wait()
        for _ in range(tries):
            try:
                reservation = catalog.reserve_upload(
                    user_id,
                    100,
                    quota=2000,
                    per_user=1000,
                    holder=f"node:{os.getpid()}",
                    expires=now_ms() + 60_000,
                )
            except QuotaError:
                refused += 1
                continue
            won += 1
            if won % 2 == 0:
                catalog.add_image(make_record(user_id, size=100), reservation=reservation)
        results.put((won, refused))


def take_places(url: str, user_id: int, tries: int, barrier: Any, results: Any) -> None:
    with PostgresCatalog(url) as catalog:
        held = 0
        barrier.wait()
        for _ in range(tries):
            try:
                catalog.reserve_upload(
                    user_id, 1, quota=0, per_user=3, holder="n", expires=now_ms() + 60_000
                )
            except TryLaterError:
                continue
            held += 1
        results.put(held)


def register(url: str, prefix: str, codes: list[bytes], barrier: Any, results: Any) -> None:
    with PostgresCatalog(url) as catalog:
        outcomes = []
        for index, code in enumerate(codes):
            barrier.wait()
            try:
                catalog.add_user(f"{prefix}{index}", "$argon2id$fake", NOW, invitation=code)
            except InvitationError:
                outcomes.append(False)
            else:
                outcomes.append(True)
        results.put((prefix, outcomes))


def five_seconds(failures: int, free: int) -> int:
    return 5000


def claim(url: str, keys: list[str], barrier: Any, results: Any) -> None:
    with PostgresCatalog(url) as catalog:
        waits = []
        for key in keys:
            barrier.wait()
            counted = [("account", key, 0), ("address", "192.0.2.0/24", 100)]
            waits.append(catalog.claim_login_attempt(counted, NOW, 0, five_seconds))
        results.put(waits)


def expire(url: str, barrier: Any, results: Any) -> None:
    with PostgresCatalog(url) as catalog:
        barrier.wait()
        results.put(catalog.expire_shares(NOW + 1))


def open_catalog(url: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        PostgresCatalog(url).close()
    except StorageError as exc:
        results.put(str(exc))
    else:
        results.put("ok")


def hold_sweep_lock(url: str, release: Any, barrier: Any, results: Any) -> None:
    with PostgresCatalog(url) as catalog, catalog.sweep_lock() as got:
        results.put(got)
        barrier.wait()
        release.wait(WAIT)


# --- races between nodes ----------------------------------------------------------------


def test_two_nodes_racing_one_quota_never_overshoot(
    catalog: PostgresCatalog, postgres_url: str
) -> None:
    alice = catalog.add_user("alice", "$argon2id$fake")
    answers = run_nodes(
        reserve_and_commit, (postgres_url, alice.id, 30), (postgres_url, alice.id, 30)
    )
    assert sum(won for won, _ in answers) == 20  # 2000 bytes, 100 at a time: no more
    assert sum(refused for _, refused in answers) == 40
    stored = catalog.used_bytes(alice.id)
    in_flight = catalog.uploads_in_flight(alice.id)
    assert stored + 100 * in_flight == 2000
    assert stored == 100 * len(catalog.list_images(alice.id)) > 0


def test_two_nodes_racing_one_users_places_never_overshoot(
    catalog: PostgresCatalog, postgres_url: str
) -> None:
    alice = catalog.add_user("alice", "$argon2id$fake")
    held = run_nodes(take_places, (postgres_url, alice.id, 10), (postgres_url, alice.id, 10))
    assert sum(held) == 3
    assert catalog.uploads_in_flight(alice.id) == 3


def test_two_registrations_racing_one_invitation_add_one_user(
    catalog: PostgresCatalog, postgres_url: str
) -> None:
    codes = [secret_hash(b"imgshare-invite-%d" % i) for i in range(15)]
    for code in codes:
        catalog.add_invitation(code, NOW - 1, NOW + 60_000)
    answers = dict(run_nodes(register, (postgres_url, "a", codes), (postgres_url, "b", codes)))
    assert [a + b for a, b in zip(answers["a"], answers["b"], strict=True)] == [1] * len(codes)
    users = {user.name: user.id for user in catalog.list_users()}
    assert len(users) == len(codes)
    with psycopg.connect(postgres_url) as db:
        used = db.execute("SELECT code_hash, used_by FROM invitations").fetchall()
    winners = {code: users[f"{'a' if answers['a'][i] else 'b'}{i}"] for i, code in enumerate(codes)}
    assert dict(used) == winners


def test_two_login_attempts_racing_one_throttle_get_one_guess(
    catalog: PostgresCatalog, postgres_url: str
) -> None:
    keys = [f"user{i}" for i in range(10)]
    for key in keys:  # a delay in force, whose time is up: one attempt may go
        catalog.add_login_failure("account", key, NOW - 10_000, 0)
    answers = run_nodes(claim, (postgres_url, keys), (postgres_url, keys))
    for first, second in zip(*answers, strict=True):
        assert sorted([first > 0, second > 0]) == [False, True]  # one through, one waits
        assert max(first, second) == 5000


def test_an_expired_share_is_reported_by_one_node(
    catalog: PostgresCatalog, postgres_url: str
) -> None:
    alice = catalog.add_user("alice", "$argon2id$fake")
    bob = catalog.add_user("bob", "$argon2id$fake")
    images = [make_record(alice) for _ in range(40)]
    for image in images:
        catalog.add_image(image)
        catalog.share_image(image.id, bob.id, NOW - 1, NOW)
    one, two = run_nodes(expire, (postgres_url,), (postgres_url,))
    assert sorted(one + two) == sorted((image.id, "alice", "bob") for image in images)
    assert catalog.expire_shares(NOW + 1) == []


def test_nodes_starting_together_migrate_once(
    postgres: PostgresCluster, empty_postgres_url: str
) -> None:
    answers = run_nodes(open_catalog, *[(empty_postgres_url,)] * 4)
    assert answers == ["ok"] * 4
    with psycopg.connect(empty_postgres_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    with PostgresCatalog(empty_postgres_url) as catalog:
        assert catalog.add_user("alice", "h").id == 1


def test_one_node_sweeps_at_a_time_and_a_dead_one_lets_go(
    catalog: PostgresCatalog, postgres_url: str
) -> None:
    release = SPAWN.Event()
    barrier = SPAWN.Barrier(2, timeout=WAIT)
    results = SPAWN.Queue()
    holder = SPAWN.Process(target=hold_sweep_lock, args=(postgres_url, release, barrier, results))
    holder.start()
    try:
        assert results.get(timeout=WAIT) is True
        barrier.wait()  # it holds the lock now
        with catalog.sweep_lock() as got:
            assert got is False
        with catalog.sweep_lock() as got:  # nothing was left held by the refusal
            assert got is False
    finally:
        holder.kill()  # dies holding it: its session ends, and with it the lock
        holder.join(WAIT)
    deadline = time.monotonic() + 10
    while True:
        with catalog.sweep_lock() as got:
            if got:
                break
        assert time.monotonic() < deadline, "the dead node's sweep lock was never released"
        time.sleep(0.05)
    with PostgresCatalog(postgres_url) as other, other.sweep_lock() as elsewhere:
        assert elsewhere is True  # released at the end of the block above


# --- one node ---------------------------------------------------------------------------


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="upgrade imgshare"):
        PostgresCatalog(postgres_url)


def test_errors_name_the_host_and_never_the_password(postgres: PostgresCluster) -> None:
    wrong = postgres.url("postgres", password="not-the-Secret-42")
    with pytest.raises(CatalogUnreachable) as refused:
        PostgresCatalog(wrong)
    message = str(refused.value)
    assert f"127.0.0.1:{postgres.port}/postgres" in message
    assert "password authentication failed" in message
    assert "not-the-Secret-42" not in message and postgres.password not in message
    assert refused.value.__cause__ is None  # the driver's error, URL and all, stays out

    with pytest.raises(CatalogUnreachable, match=r"PostgreSQL at 127\.0\.0\.1:1/x") as down:
        PostgresCatalog("postgresql://imgshare:s3cret-Word@127.0.0.1:1/x?connect_timeout=2")
    assert "s3cret-Word" not in str(down.value)

    with pytest.raises(ConfigError, match="not a valid PostgreSQL URL"):
        PostgresCatalog("postgresql://imgshare:pw@127.0.0.1:5432/db?no_such_option=1")


def test_repr_shows_no_password(catalog: PostgresCatalog, postgres: PostgresCluster) -> None:
    assert postgres.password not in repr(catalog)
    assert repr(catalog).startswith("PostgresCatalog('postgresql://imgshare@127.0.0.1:")


def test_the_catalog_comes_back_after_its_connections_were_dropped(
    catalog: PostgresCatalog, postgres: PostgresCluster, postgres_url: str
) -> None:
    alice = catalog.add_user("alice", "h")
    threads = [threading.Thread(target=catalog.get_user, args=(alice.id,)) for _ in range(4)]
    for thread in threads:  # several pooled connections, all idle now
        thread.start()
    for thread in threads:
        thread.join()
    assert postgres.terminate_connections(postgres_url) >= 1  # as a restart does
    assert catalog.get_user(alice.id) == alice  # a dead pooled connection is retried
    catalog.set_password_hash(alice.id, "h2")
    assert postgres.terminate_connections(postgres_url) >= 1
    catalog.add_image(make_record(alice))  # writes too: nothing was sent before the loss
    assert len(catalog.list_images(alice.id)) == 1


def test_a_deadlock_is_retried(catalog: PostgresCatalog) -> None:
    users = [catalog.add_user(name, "h") for name in ("a", "b")]
    barrier = threading.Barrier(2, timeout=WAIT)
    tries: list[str] = []

    def locker(first: int, second: int, name: str) -> Callable[[Database], None]:
        def body(db: Database) -> None:
            tries.append(name)
            db.execute("SELECT 1 FROM users WHERE id = ? FOR UPDATE", (first,))
            if tries.count(name) == 1:  # the first try of each meets the other's lock
                barrier.wait()
            db.execute("SELECT 1 FROM users WHERE id = ? FOR UPDATE", (second,))

        return body

    errors: list[BaseException] = []

    def run(body: Callable[[Database], None]) -> None:
        try:
            catalog._write("lock two users", body)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(locker(users[0].id, users[1].id, "x"),)),
        threading.Thread(target=run, args=(locker(users[1].id, users[0].id, "y"),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    assert sorted(tries) in (["x", "x", "y"], ["x", "y", "y"])  # one of them ran twice


def test_not_durable_commits_skip_the_wait_for_the_wal(catalog: PostgresCatalog) -> None:
    def setting(name: str) -> Callable[[Database], str]:
        return lambda db: str(db.execute(f"SELECT current_setting('{name}')").fetchone()[0])

    assert catalog._write("check", setting("synchronous_commit")) == "on"
    assert catalog._write("check", setting("synchronous_commit"), durable=False) == "off"
    assert catalog._write("check", setting("synchronous_commit")) == "on"  # SET LOCAL
    # A transaction left open (a node that hangs mid-way) ends on the server's side.
    assert catalog._write("check", setting("idle_in_transaction_session_timeout")) == "1min"
    assert catalog._read("check", setting("idle_in_transaction_session_timeout")) == "0"


def test_a_nul_in_a_name_is_stored_not_refused(catalog: PostgresCatalog) -> None:
    catalog.audit("login_failed", "eve\0alice", None, NOW)
    (event,) = catalog.audit_events()
    assert event.user_name == "eve\ufffdalice"
    assert catalog.get_user_by_name("eve\0alice") is None
    assert catalog.add_login_failure("account", "eve\0alice", NOW, 0) == 1


def test_all_connections_busy_is_a_storage_error(postgres_url: str) -> None:
    with PostgresCatalog(postgres_url, pool_size=1, pool_timeout=0.2) as catalog:
        busy = threading.Event()

        def hold(db: Database) -> None:
            busy.set()
            db.execute("SELECT pg_sleep(1)")

        holder = threading.Thread(target=catalog._read, args=("hold", hold))
        holder.start()
        assert busy.wait(WAIT)
        with pytest.raises(StorageError, match=r"all 1 connections .* stayed busy for 0.2 s"):
            catalog.get_user(1)
        with catalog.sweep_lock() as got:  # a connection of its own, outside the pool
            assert got is True
        holder.join(WAIT)
        assert catalog.get_user(1) is None  # free again
