"""Accounts: name and password rules, argon2id, one answer for every failed login."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from imgshare.errors import AuthError, ConfigError, TryLaterError
from imgshare.server.accounts import Accounts, check_username, default_hasher
from imgshare.server.logins import HashGate, LoginThrottle
from imgshare.store.catalog import SQLiteCatalog, UserExistsError

PASSWORD = "correct horse battery staple"


class CountingHasher(PasswordHasher):
    """A cheap argon2id hasher that records how often and how concurrently it runs."""

    def __init__(self, **params: Any) -> None:
        params = {"time_cost": 1, "memory_cost": 8, "parallelism": 1, **params}
        super().__init__(**params)
        self.verifies = 0
        self.running = 0
        self.peak = 0
        self.delay = 0.0
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self.verifies += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.delay)
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def accounts(catalog: SQLiteCatalog, hasher: CountingHasher) -> Accounts:
    return Accounts(catalog, hasher)


def test_add_and_authenticate(accounts: Accounts) -> None:
    added = accounts.add_user("alice", PASSWORD)
    assert added.password_hash.startswith("$argon2id$")
    assert accounts.authenticate("alice", PASSWORD) == added
    assert [u.name for u in accounts.list_users()] == ["alice"]


@pytest.mark.parametrize(
    ("name", "password"),
    [
        ("alice", "wrong password"),  # wrong password
        ("bob", PASSWORD),  # unknown user
        ("Alice", PASSWORD),  # not a valid name
        ("alice", "short"),  # not a valid password
        ("alice", "x" * 5000),  # far too long
    ],
)
def test_every_failure_gives_the_same_answer_after_one_hash(
    accounts: Accounts, hasher: CountingHasher, name: str, password: str
) -> None:
    accounts.add_user("alice", PASSWORD)
    hasher.verifies = 0
    with pytest.raises(AuthError) as info:
        accounts.authenticate(name, password)
    assert str(info.value) == "invalid username or password"
    assert hasher.verifies == 1  # unknown users cost a (dummy) verify too
    assert password not in str(info.value)


def test_unknown_user_verifies_against_hash_with_same_parameters(
    catalog: SQLiteCatalog,
) -> None:
    hasher = CountingHasher(time_cost=2, memory_cost=16)
    accounts = Accounts(catalog, hasher)
    real = accounts.add_user("alice", PASSWORD).password_hash
    assert extract_parameters(accounts._dummy_hash) == extract_parameters(real)


@pytest.mark.parametrize("name", ["a", "alice", "bob.smith", "x_1-2", "0", "a" * 32])
def test_valid_user_names(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize(
    "name", ["", "Alice", "-bob", ".bob", "_bob", "a" * 33, "al ice", "al/ice", "é", "bob\n"]
)
def test_invalid_user_names_are_config_errors(accounts: Accounts, name: str) -> None:
    with pytest.raises(ConfigError, match="user name is 1 to 32 characters"):
        accounts.add_user(name, PASSWORD)


@pytest.mark.parametrize("password", ["1234567", "x" * 1025, "\ud800" * 10, ""])
def test_invalid_passwords_are_config_errors(accounts: Accounts, password: str) -> None:
    with pytest.raises(ConfigError, match="8 to 1024 characters") as info:
        accounts.add_user("alice", password)
    assert password not in str(info.value) or not password


@pytest.mark.parametrize("password", ["12345678", "x" * 1024, "pässwörd"])
def test_password_length_bounds(accounts: Accounts, password: str) -> None:
    accounts.add_user("alice", password)
    assert accounts.authenticate("alice", password).name == "alice"


def test_passwords_are_nfkc_normalised(accounts: Accounts) -> None:
    accounts.add_user("alice", "caf\u00e9 au lait")  # precomposed é
    assert accounts.authenticate("alice", "cafe\u0301 au lait").name == "alice"  # e + accent


def test_duplicate_user(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    with pytest.raises(UserExistsError):
        accounts.add_user("alice", "another password")


def test_set_password(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    accounts.set_password("alice", "a new password")
    with pytest.raises(AuthError):
        accounts.authenticate("alice", PASSWORD)
    assert accounts.authenticate("alice", "a new password").name == "alice"
    with pytest.raises(ConfigError, match="no user named"):
        accounts.set_password("bob", "a new password")


def test_remove_user(accounts: Accounts) -> None:
    accounts.add_user("alice", PASSWORD)
    assert accounts.remove_user("alice") == []
    with pytest.raises(AuthError):
        accounts.authenticate("alice", PASSWORD)
    with pytest.raises(ConfigError):
        accounts.remove_user("alice")


def test_old_hash_parameters_are_upgraded_on_login(catalog: SQLiteCatalog) -> None:
    Accounts(catalog, CountingHasher(time_cost=1)).add_user("alice", PASSWORD)
    stronger = Accounts(catalog, CountingHasher(time_cost=2))
    user = stronger.authenticate("alice", PASSWORD)
    stored = catalog.get_user_by_name("alice")
    assert stored is not None and stored.password_hash == user.password_hash
    assert extract_parameters(stored.password_hash).time_cost == 2
    assert stronger.authenticate("alice", PASSWORD) == user  # no second rehash


def test_default_parameters_are_argon2id_with_documented_cost(catalog: SQLiteCatalog) -> None:
    hasher = default_hasher()
    params = extract_parameters(hasher.hash("x" * 8))
    assert params.type is Type.ID
    assert (params.time_cost, params.memory_cost, params.parallelism) == (3, 65536, 1)
    assert (params.salt_len, params.hash_len) == (16, 32)
    accounts = Accounts(catalog)  # no hasher: the defaults
    user = accounts.add_user("alice", PASSWORD)
    assert extract_parameters(user.password_hash) == params
    assert accounts.authenticate("alice", PASSWORD) == user


def test_concurrent_hashes_are_bounded(catalog: SQLiteCatalog, hasher: CountingHasher) -> None:
    accounts = Accounts(catalog, hasher, gate=HashGate(2))
    accounts.add_user("alice", PASSWORD)
    hasher.delay = 0.02
    failures: list[BaseException] = []

    def login() -> None:
        try:
            accounts.authenticate("alice", PASSWORD)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=login) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert hasher.peak == 2


def test_busy_hash_slots_say_try_later_not_wrong_password(
    catalog: SQLiteCatalog, hasher: CountingHasher
) -> None:
    """Finding 3: a login that waited too long for a hash slot was answered
    "invalid username or password" and counted as a failure."""
    throttle = LoginThrottle(catalog)
    accounts = Accounts(catalog, hasher, gate=HashGate(1, max_wait=0.05), throttle=throttle)
    accounts.add_user("alice", PASSWORD)
    hasher.delay = 0.3
    slow = threading.Thread(target=accounts.authenticate, args=("alice", PASSWORD))
    slow.start()
    time.sleep(0.1)
    with pytest.raises(TryLaterError, match="too many logins") as raised:
        accounts.authenticate("alice", PASSWORD, "192.0.2.7")
    assert raised.value.retry_after > 0
    slow.join()
    assert catalog.login_failures("account", "alice", 0) == (0, 0)  # not counted
    assert catalog.login_failures("address", "192.0.2.7", 0) == (0, 0)
    assert accounts.authenticate("alice", PASSWORD).name == "alice"


def test_passwords_never_reach_the_logs(
    accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        accounts.add_user("alice", PASSWORD)
        accounts.authenticate("alice", PASSWORD)
        accounts.set_password("alice", "second secret!")
        with pytest.raises(AuthError):
            accounts.authenticate("alice", "third secret!")
    assert "alice" in caplog.text
    for secret in (PASSWORD, "second secret!", "third secret!"):
        assert secret not in caplog.text
    assert "argon2" not in caplog.text
