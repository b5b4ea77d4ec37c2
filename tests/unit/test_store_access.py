"""Who may do what, in the catalog (``imgshare.store.access.AccessTables``): shares,
paging, tokens, invitations and the audit trail, on real SQLite and PostgreSQL
catalogs (every test runs on both)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgshare.errors import ForbiddenError
from imgshare.server.credentials import secret_hash
from imgshare.store.access import InvitationError, ShareRecord, TokenRecord
from imgshare.store.catalog import ImageRecord, SQLCatalog, User, UserExistsError
from services.postgres import CATALOG_KINDS
from store_helpers import make_record

Rows = Callable[[str], list[tuple[Any, ...]]]

NOW = 1_800_000_000_000
MINUTE = 60_000
FIRST_PAGE = (0, "0" * 32)


@pytest.fixture
def alice(catalog: SQLCatalog) -> User:
    return catalog.add_user("alice", "$argon2id$fake")


@pytest.fixture
def bob(catalog: SQLCatalog) -> User:
    return catalog.add_user("bob", "$argon2id$fake")


@pytest.fixture
def carol(catalog: SQLCatalog) -> User:
    return catalog.add_user("carol", "$argon2id$fake")


def image_of(catalog: SQLCatalog, owner: User, created: int = NOW - MINUTE) -> ImageRecord:
    record = dataclasses.replace(make_record(owner), created_at=created)
    catalog.add_image(record)
    return record


@pytest.fixture(params=CATALOG_KINDS)
def catalog_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rows(catalog_kind: str, catalog_path: Path, request: pytest.FixtureRequest) -> Rows:
    """Read the test's database directly, on a connection of its own, as another
    process would."""
    if catalog_kind == "postgres":
        import psycopg

        url = request.getfixturevalue("postgres_url")

        def read_postgres(sql: str) -> list[tuple[Any, ...]]:
            with psycopg.connect(url) as db:
                return db.execute(sql).fetchall()  # type: ignore[arg-type]

        return read_postgres

    def read_sqlite(sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(catalog_path)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    return read_sqlite


# --- shares --------------------------------------------------------------------------


def test_a_share_is_listed_by_user_name(
    catalog: SQLCatalog, alice: User, bob: User, carol: User
) -> None:
    image = image_of(catalog, alice)
    catalog.share_image(image.id, carol.id, NOW, 0)
    catalog.share_image(image.id, bob.id, NOW + 1, NOW + MINUTE)
    assert catalog.shares_of(image.id, NOW) == [
        ShareRecord("bob", NOW + 1, NOW + MINUTE),
        ShareRecord("carol", NOW, 0),
    ]
    assert catalog.shares_of(make_record(alice).id, NOW) == []  # no such image


def test_sharing_again_replaces_the_expiry(catalog: SQLCatalog, alice: User, bob: User) -> None:
    image = image_of(catalog, alice)
    catalog.share_image(image.id, bob.id, NOW, NOW + MINUTE)
    catalog.share_image(image.id, bob.id, NOW + 5, 0)
    assert catalog.shares_of(image.id, NOW + 2 * MINUTE) == [ShareRecord("bob", NOW + 5, 0)]


def test_an_expired_share_stops_at_once(
    catalog: SQLCatalog, alice: User, bob: User, rows: Rows
) -> None:
    image = image_of(catalog, alice)
    expiry = NOW + MINUTE
    catalog.share_image(image.id, bob.id, NOW, expiry)
    assert catalog.readable_image(image.id, bob.id, expiry - 1) == image
    assert catalog.shares_of(image.id, expiry - 1) != []
    # At its expiry, before anything has removed it, it no longer counts anywhere.
    assert catalog.readable_image(image.id, bob.id, expiry) is None
    assert catalog.shares_of(image.id, expiry) == []
    page, more = catalog.list_page(bob.id, shared=True, after=FIRST_PAGE, limit=10, now=expiry)
    assert (page, more) == ([], False)
    assert len(rows("SELECT * FROM shares")) == 1  # still there, not used


def test_unshare_says_whether_there_was_a_share(
    catalog: SQLCatalog, alice: User, bob: User, carol: User
) -> None:
    image = image_of(catalog, alice)
    catalog.share_image(image.id, bob.id, NOW, 0)
    catalog.share_image(image.id, carol.id, NOW, 0)
    assert catalog.unshare_image(image.id, bob.id) is True
    assert catalog.unshare_image(image.id, bob.id) is False
    assert catalog.readable_image(image.id, bob.id, NOW) is None
    assert catalog.readable_image(image.id, carol.id, NOW) == image  # only bob's went


def test_readable_image_owner_shared_other_and_missing(
    catalog: SQLCatalog, alice: User, bob: User, carol: User
) -> None:
    image = image_of(catalog, alice)
    catalog.share_image(image.id, bob.id, NOW, 0)
    assert catalog.readable_image(image.id, alice.id, NOW) == image  # the owner
    assert catalog.readable_image(image.id, bob.id, NOW) == image  # shared, no expiry
    assert catalog.readable_image(image.id, carol.id, NOW) is None  # not shared with her
    assert catalog.readable_image(make_record(alice).id, alice.id, NOW) is None  # no image


def test_a_share_does_not_make_the_recipients_images_readable(
    catalog: SQLCatalog, alice: User, bob: User
) -> None:
    alices = image_of(catalog, alice)
    bobs = image_of(catalog, bob)
    catalog.share_image(alices.id, bob.id, NOW, 0)
    assert catalog.readable_image(bobs.id, alice.id, NOW) is None


# --- pages of images -----------------------------------------------------------------


def test_a_page_of_ones_own_images_is_oldest_first_and_pages_on(
    catalog: SQLCatalog, alice: User, bob: User
) -> None:
    made = [image_of(catalog, alice, created=NOW - 10 * MINUTE + i) for i in range(5)]
    # Two more at one and the same time: the id breaks the tie.
    twins = sorted((image_of(catalog, alice, created=NOW) for _ in range(2)), key=lambda r: r.id)
    image_of(catalog, bob)  # not hers
    expected = [*made, *twins]

    seen: list[ImageRecord] = []
    after = FIRST_PAGE
    pages = []
    while True:
        page, more = catalog.list_page(alice.id, shared=False, after=after, limit=3, now=NOW)
        pages.append((len(page), more))
        seen += [record for record, _ in page]
        assert {owner for _, owner in page} <= {"alice"}
        if not more:
            break
        after = (page[-1][0].created_at, page[-1][0].id)
    assert seen == expected
    assert pages == [(3, True), (3, True), (1, False)]


def test_a_page_that_ends_exactly_says_no_more(catalog: SQLCatalog, alice: User) -> None:
    made = [image_of(catalog, alice, created=NOW + i) for i in range(2)]
    page, more = catalog.list_page(alice.id, shared=False, after=FIRST_PAGE, limit=2, now=NOW)
    assert [record for record, _ in page] == made and more is False
    last = (made[-1].created_at, made[-1].id)
    assert catalog.list_page(alice.id, shared=False, after=last, limit=2, now=NOW) == ([], False)


def test_the_shared_scope_shows_others_images_with_their_owners(
    catalog: SQLCatalog, alice: User, bob: User, carol: User
) -> None:
    from_alice = image_of(catalog, alice, created=NOW - 3)
    from_carol = image_of(catalog, carol, created=NOW - 2)
    expired = image_of(catalog, alice, created=NOW - 1)
    not_shared = image_of(catalog, carol, created=NOW)
    bobs_own = image_of(catalog, bob, created=NOW - 4)
    catalog.share_image(from_alice.id, bob.id, NOW, 0)
    catalog.share_image(from_carol.id, bob.id, NOW, NOW + MINUTE)
    catalog.share_image(expired.id, bob.id, NOW - MINUTE, NOW - 1)
    catalog.share_image(not_shared.id, alice.id, NOW, 0)  # shared, but with someone else

    page, more = catalog.list_page(bob.id, shared=True, after=FIRST_PAGE, limit=10, now=NOW)
    assert [(record.id, owner) for record, owner in page] == [
        (from_alice.id, "alice"),
        (from_carol.id, "carol"),
    ]
    assert more is False
    own, _ = catalog.list_page(bob.id, shared=False, after=FIRST_PAGE, limit=10, now=NOW)
    assert [(record.id, owner) for record, owner in own] == [(bobs_own.id, "bob")]
    # Paging works in the shared scope too.
    first, more = catalog.list_page(bob.id, shared=True, after=FIRST_PAGE, limit=1, now=NOW)
    assert [r.id for r, _ in first] == [from_alice.id] and more is True
    after = (first[0][0].created_at, first[0][0].id)
    second, more = catalog.list_page(bob.id, shared=True, after=after, limit=1, now=NOW)
    assert [r.id for r, _ in second] == [from_carol.id] and more is False


def test_expire_shares_returns_and_removes_only_expired_ones(
    catalog: SQLCatalog, alice: User, bob: User, carol: User, rows: Rows
) -> None:
    image = image_of(catalog, alice)
    other = image_of(catalog, carol)
    catalog.share_image(image.id, bob.id, NOW - MINUTE, NOW)  # expires exactly now
    catalog.share_image(image.id, carol.id, NOW, 0)  # until unshared
    catalog.share_image(other.id, bob.id, NOW, NOW + MINUTE)  # later
    assert catalog.expire_shares(NOW) == [(image.id, "alice", "bob")]
    assert catalog.expire_shares(NOW) == []
    remaining = rows("SELECT image_id, user_id FROM shares ORDER BY user_id")
    assert sorted(remaining) == sorted([(image.id, carol.id), (other.id, bob.id)])
    assert catalog.expire_shares(NOW + MINUTE) == [(other.id, "carol", "bob")]


# --- tokens --------------------------------------------------------------------------


def test_a_token_logs_in_by_its_hash(
    catalog: SQLCatalog, alice: User, bob: User, rows: Rows
) -> None:
    record = catalog.add_token(alice.id, "laptop", secret_hash(b"secret one"), NOW, 0)
    assert record == TokenRecord(record.id, alice.id, "laptop", NOW, 0, 0)
    catalog.add_token(bob.id, "phone", secret_hash(b"secret two"), NOW, 0)
    assert catalog.token_owner(secret_hash(b"secret one"), NOW) == (alice, record.id)
    found = catalog.token_owner(secret_hash(b"secret two"), NOW)
    assert found is not None and found[0] == bob
    assert catalog.token_owner(secret_hash(b"secret three"), NOW) is None
    assert catalog.token_owner(b"secret one".ljust(32, b"\0"), NOW) is None  # not the hash
    stored = rows("SELECT secret_hash FROM tokens ORDER BY id")
    assert stored == [(secret_hash(b"secret one"),), (secret_hash(b"secret two"),)]


def test_an_expired_token_is_refused(catalog: SQLCatalog, alice: User) -> None:
    record = catalog.add_token(alice.id, "t", secret_hash(b"s"), NOW, NOW + MINUTE)
    assert catalog.token_owner(secret_hash(b"s"), NOW + MINUTE - 1) is not None
    assert catalog.token_alive(record.id, NOW + MINUTE - 1)
    assert catalog.token_owner(secret_hash(b"s"), NOW + MINUTE) is None
    assert not catalog.token_alive(record.id, NOW + MINUTE)
    # Still listed (the owner sees it expired), until revoked.
    assert [t.id for t in catalog.list_tokens(alice.id)] == [record.id]


def test_a_token_without_expiry_lives_until_revoked(catalog: SQLCatalog, alice: User) -> None:
    record = catalog.add_token(alice.id, "t", secret_hash(b"s"), NOW, 0)
    far = NOW + 100 * 365 * 86_400_000
    assert catalog.token_owner(secret_hash(b"s"), far) is not None
    assert catalog.revoke_token(alice.id, record.id) == dataclasses.replace(
        record, last_used_ms=far
    )
    assert catalog.token_owner(secret_hash(b"s"), NOW) is None
    assert not catalog.token_alive(record.id, NOW)
    assert catalog.revoke_token(alice.id, record.id) is None  # once


def test_one_cannot_revoke_anothers_token(catalog: SQLCatalog, alice: User, bob: User) -> None:
    record = catalog.add_token(alice.id, "t", secret_hash(b"s"), NOW, 0)
    assert catalog.revoke_token(bob.id, record.id) is None
    assert catalog.token_alive(record.id, NOW)


def test_list_tokens_is_per_user_oldest_first(catalog: SQLCatalog, alice: User, bob: User) -> None:
    first = catalog.add_token(alice.id, "one", secret_hash(b"1"), NOW, 0)
    catalog.add_token(bob.id, "bobs", secret_hash(b"2"), NOW, 0)
    second = catalog.add_token(alice.id, "two", secret_hash(b"3"), NOW + 1, NOW + MINUTE)
    assert catalog.list_tokens(alice.id) == [first, second]
    assert catalog.list_tokens(12345) == []


def test_revoke_tokens_keeps_the_one_asked(catalog: SQLCatalog, alice: User, bob: User) -> None:
    tokens = [
        catalog.add_token(alice.id, f"t{i}", secret_hash(b"%d" % i), NOW, 0) for i in range(3)
    ]
    bobs = catalog.add_token(bob.id, "bobs", secret_hash(b"bob"), NOW, 0)
    assert catalog.revoke_tokens(alice.id, keep=tokens[1].id) == 2
    assert [t.id for t in catalog.list_tokens(alice.id)] == [tokens[1].id]
    assert catalog.revoke_tokens(alice.id) == 1
    assert catalog.list_tokens(alice.id) == []
    assert catalog.list_tokens(bob.id) == [bobs]  # bob's untouched
    assert catalog.revoke_tokens(alice.id) == 0


def test_last_use_is_written_at_most_once_a_minute(catalog: SQLCatalog, alice: User) -> None:
    catalog.add_token(alice.id, "t", secret_hash(b"s"), NOW, 0)

    def last_used() -> int:
        (token,) = catalog.list_tokens(alice.id)
        return token.last_used_ms

    assert last_used() == 0
    catalog.token_owner(secret_hash(b"s"), NOW)
    assert last_used() == NOW
    catalog.token_owner(secret_hash(b"s"), NOW + MINUTE - 1)
    assert last_used() == NOW  # too soon: no write
    catalog.token_owner(secret_hash(b"s"), NOW + MINUTE)
    assert last_used() == NOW + MINUTE


# --- invitations ---------------------------------------------------------------------


def test_an_invitation_adds_one_user_once(catalog: SQLCatalog, rows: Rows) -> None:
    code = secret_hash(b"imgshare-invite-abc")
    catalog.add_invitation(code, NOW, NOW + MINUTE)
    dave = catalog.add_user("dave", "$argon2id$fake", NOW + 1, invitation=code)
    assert rows("SELECT used_by, used_ms FROM invitations") == [(dave.id, NOW + 1)]
    with pytest.raises(InvitationError):
        catalog.add_user("erin", "$argon2id$fake", NOW + 2, invitation=code)
    assert catalog.get_user_by_name("erin") is None  # the failed invitation left no user
    assert [u.name for u in catalog.list_users()] == ["dave"]


def test_an_expired_or_unknown_invitation_adds_nobody(catalog: SQLCatalog, rows: Rows) -> None:
    code = secret_hash(b"imgshare-invite-old")
    catalog.add_invitation(code, NOW, NOW + MINUTE)
    with pytest.raises(InvitationError) as expired:
        catalog.add_user("dave", "$argon2id$fake", NOW + MINUTE, invitation=code)
    with pytest.raises(InvitationError) as unknown:
        catalog.add_user("dave", "$argon2id$fake", NOW, invitation=secret_hash(b"other"))
    assert str(expired.value) == str(unknown.value)  # one answer for all
    assert isinstance(expired.value, ForbiddenError)
    assert catalog.list_users() == []
    assert rows("SELECT used_by, used_ms FROM invitations") == [(None, None)]
    # The invitation that merely expired was not used up by the attempts.
    catalog.add_invitation(secret_hash(b"fresh"), NOW, NOW + MINUTE)
    assert catalog.add_user("dave", "h", NOW, invitation=secret_hash(b"fresh")).name == "dave"


def test_a_taken_name_does_not_use_up_the_invitation(
    catalog: SQLCatalog, alice: User, rows: Rows
) -> None:
    code = secret_hash(b"imgshare-invite-x")
    catalog.add_invitation(code, NOW, NOW + MINUTE)
    with pytest.raises(UserExistsError):
        catalog.add_user("alice", "$argon2id$fake", NOW, invitation=code)
    assert rows("SELECT used_by FROM invitations") == [(None,)]
    assert catalog.add_user("dave", "$argon2id$fake", NOW, invitation=code).name == "dave"


def test_removing_the_invited_user_keeps_the_invitation_used(
    catalog: SQLCatalog, rows: Rows
) -> None:
    code = secret_hash(b"imgshare-invite-y")
    catalog.add_invitation(code, NOW, NOW + MINUTE)
    catalog.add_user("dave", "$argon2id$fake", NOW, invitation=code)
    catalog.remove_user("dave")
    assert rows("SELECT used_by, used_ms FROM invitations") == [(None, NOW)]
    with pytest.raises(InvitationError):
        catalog.add_user("dave", "$argon2id$fake", NOW, invitation=code)


# --- the audit trail -----------------------------------------------------------------


def test_audit_events_round_trip_oldest_first(catalog: SQLCatalog) -> None:
    catalog.audit("login", "alice", "192.0.2.0/24", NOW, method="password")
    catalog.audit("login_failed", "bob", "2001:db8::/64", NOW + 1, method="token")
    catalog.audit("invitation_created", None, None, NOW + 2, expires_ms=NOW + MINUTE)
    events = catalog.audit_events()
    assert [(e.time_ms, e.event, e.user_name, e.network, e.detail) for e in events] == [
        (NOW, "login", "alice", "192.0.2.0/24", {"method": "password"}),
        (NOW + 1, "login_failed", "bob", "2001:db8::/64", {"method": "token"}),
        (NOW + 2, "invitation_created", None, None, {"expires_ms": NOW + MINUTE}),
    ]
    assert events[0].id < events[1].id < events[2].id


def test_audit_events_filter_and_keep_the_newest(catalog: SQLCatalog) -> None:
    for i in range(5):
        catalog.audit("login", "alice", None, NOW + i, n=i)
        catalog.audit("login_failed", "alice" if i % 2 else "bob", None, NOW + i, n=i)
    assert [e.detail["n"] for e in catalog.audit_events(event="login", limit=2)] == [3, 4]
    assert [(e.event, e.detail["n"]) for e in catalog.audit_events(user_name="bob")] == [
        ("login_failed", 0),
        ("login_failed", 2),
        ("login_failed", 4),
    ]
    both = catalog.audit_events(user_name="alice", event="login_failed")
    assert [e.detail["n"] for e in both] == [1, 3]
    assert catalog.audit_events(user_name="nobody") == []
    assert len(catalog.audit_events()) == 10


def test_a_name_with_control_characters_is_kept_as_given(catalog: SQLCatalog) -> None:
    catalog.audit("login_failed", "eve\nlogin alice", None, NOW)
    (event,) = catalog.audit_events(user_name="eve\nlogin alice")
    assert event.user_name == "eve\nlogin alice"


def test_count_events_by_kind_network_and_time(catalog: SQLCatalog) -> None:
    for time in (NOW - 2 * MINUTE, NOW - MINUTE, NOW):
        catalog.audit("registered", "x", "192.0.2.0/24", time)
    catalog.audit("registered", "y", "198.51.100.0/24", NOW)
    catalog.audit("login", "x", "192.0.2.0/24", NOW)
    assert catalog.count_events("registered", "192.0.2.0/24", NOW - MINUTE) == 2
    assert catalog.count_events("registered", "192.0.2.0/24", 0) == 3
    assert catalog.count_events("registered", "198.51.100.0/24", 0) == 1
    assert catalog.count_events("login", "198.51.100.0/24", 0) == 0


# --- what goes with an image or a user -------------------------------------------------


def test_deleting_an_image_takes_its_shares(
    catalog: SQLCatalog, alice: User, bob: User, rows: Rows
) -> None:
    image = image_of(catalog, alice)
    kept = image_of(catalog, alice)
    catalog.share_image(image.id, bob.id, NOW, 0)
    catalog.share_image(kept.id, bob.id, NOW, 0)
    assert catalog.delete_image(image.id) is not None
    assert rows("SELECT image_id FROM shares") == [(kept.id,)]
    assert catalog.readable_image(image.id, bob.id, NOW) is None


def test_removing_a_recipient_takes_their_shares_and_tokens(
    catalog: SQLCatalog, alice: User, bob: User, rows: Rows
) -> None:
    image = image_of(catalog, alice)
    catalog.share_image(image.id, bob.id, NOW, 0)
    token = catalog.add_token(bob.id, "t", secret_hash(b"s"), NOW, 0)
    catalog.add_token(alice.id, "t", secret_hash(b"a"), NOW, 0)
    catalog.remove_user("bob")
    assert rows("SELECT * FROM shares") == []
    assert rows("SELECT user_id FROM tokens") == [(alice.id,)]
    assert catalog.token_owner(secret_hash(b"s"), NOW) is None
    assert not catalog.token_alive(token.id, NOW)


def test_purging_an_owner_takes_the_shares_of_their_images(
    catalog: SQLCatalog, alice: User, bob: User, rows: Rows
) -> None:
    image = image_of(catalog, alice)
    bobs = image_of(catalog, bob)
    catalog.share_image(image.id, bob.id, NOW, 0)
    catalog.share_image(bobs.id, alice.id, NOW, 0)
    removed = catalog.remove_user("alice", purge=True)
    assert [d.image_id for d in removed] == [image.id]
    assert rows("SELECT * FROM shares") == []
    page, _ = catalog.list_page(bob.id, shared=True, after=FIRST_PAGE, limit=10, now=NOW)
    assert page == []
