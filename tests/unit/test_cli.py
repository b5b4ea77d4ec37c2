"""The command line through its real dispatcher: exit status, output, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

from imgshare import __version__
from imgshare.cli import cli, main
from imgshare.cli.audit import EVENTS
from imgshare.errors import AuthError, ForbiddenError
from imgshare.server.accounts import Accounts
from imgshare.server.credentials import Tokens, secret_hash
from imgshare.store import StoreConfig, open_catalog, open_store
from imgshare.store.access import AuditRecord, InvitationError
from imgshare.store.catalog import now_ms
from imgshare.store.lock import DataFolderLock
from store_helpers import make_record


def test_version_flag_prints_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_command_is_an_error(capsys: object) -> None:
    assert main(["no-such-command"]) != 0


# --- the admin commands: user passwd, user invite, user remove, audit -----------------

NOW_SLACK_MS = 60_000
ADMIN_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Through the real dispatcher, as a user runs it: exit status, stdout, stderr."""
    status = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def fails(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """A command that must fail with exit 1 and one line; return that line."""
    status, out, err = run(capsys, *args)
    assert status == 1, (out, err)
    assert err.startswith("imgshare: error: ") and err.count("\n") == 1, err
    return err


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / f"password-{len(list(tmp_path.glob('password-*')))}"
    path.write_text(password + "\n")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data folder with users alice and bob (hashed cheaply: only the tests' own)."""
    folder = tmp_path / "data"
    with open_catalog(folder) as catalog:
        accounts = Accounts(catalog, hasher=ADMIN_HASHER)
        accounts.add_user("alice", "alice's password")
        accounts.add_user("bob", "bob's password")
    return folder


def password_is(data: Path, name: str, password: str) -> bool:
    with open_catalog(data) as catalog:
        try:
            Accounts(catalog, hasher=ADMIN_HASHER).authenticate(name, password)
        except AuthError:
            return False
    return True


def add_tokens(data: Path, name: str, count: int) -> None:
    with open_catalog(data) as catalog:
        found = catalog.get_user_by_name(name)
        assert found is not None
        for _ in range(count):
            Tokens(catalog).create(found, "laptop", now_ms(), 0)


def audit_events(data: Path, event: str) -> list[AuditRecord]:
    with open_catalog(data) as catalog:
        return catalog.audit_events(event=event)


def test_user_passwd_resets_the_password_and_revokes_the_tokens(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_tokens(data, "alice", 2)
    add_tokens(data, "bob", 1)
    new = password_file(tmp_path, "a fresh password")
    status, out, err = run(
        capsys, "user", "passwd", "alice", "--data", data, "--password-file", new
    )
    assert (status, err) == (0, "")
    assert out == "password of user alice reset; 2 API token(s) revoked\n"
    assert password_is(data, "alice", "a fresh password")
    assert not password_is(data, "alice", "alice's password")
    assert password_is(data, "bob", "bob's password")
    with open_catalog(data) as catalog:
        alice, bob = catalog.get_user_by_name("alice"), catalog.get_user_by_name("bob")
        assert alice is not None and bob is not None
        assert catalog.list_tokens(alice.id) == []
        assert len(catalog.list_tokens(bob.id)) == 1
    (reset,) = audit_events(data, "password_reset")
    assert (reset.user_name, reset.network, reset.detail) == ("alice", None, {"tokens_revoked": 2})


def test_user_passwd_refuses_before_asking_for_a_password(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No --password-file: had it prompted, reading stdin under pytest would fail.
    assert "no user named 'alcie'" in fails(capsys, "user", "passwd", "alcie", "--data", data)
    assert "a user name is" in fails(capsys, "user", "passwd", "Alice", "--data", data)
    nowhere = tmp_path / "nowhere"
    err = fails(capsys, "user", "passwd", "alice", "--data", nowhere)
    assert f"the data folder {nowhere} does not exist" in err
    assert not nowhere.exists()  # a mistyped --data makes nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no catalog.sqlite3" in fails(capsys, "user", "passwd", "alice", "--data", empty)
    assert list(empty.iterdir()) == []
    short = password_file(tmp_path, "short")
    err = fails(capsys, "user", "passwd", "alice", "--data", data, "--password-file", short)
    assert "a password is 8 to 1024 characters" in err
    assert password_is(data, "alice", "alice's password")
    assert audit_events(data, "password_reset") == []


def test_user_invite_prints_a_code_that_registers_once(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "user", "invite", "--data", data)
    assert status == 0
    code = out.strip()
    assert out == code + "\n" and code.startswith("imgshare-invite-")  # alone on stdout
    assert f"imgshare register --server HOST:PORT --ca ca.pem --user NAME --invite {code}" in err
    assert 'registration = "invite"' in err  # the setting it needs, since none was checked
    assert "warning" not in err
    with open_catalog(data) as catalog:
        accounts = Accounts(catalog, hasher=ADMIN_HASHER)
        assert accounts.register("carol", "carol's password", mode="invite", invitation=code)
        with pytest.raises(ForbiddenError):
            accounts.register("dave", "dave's password", mode="invite", invitation=code)
    (created,) = audit_events(data, "invitation_created")
    week = 7 * 86_400_000
    assert abs(created.detail["expires_ms"] - (created.time_ms + week)) < NOW_SLACK_MS
    assert (created.user_name, created.network, set(created.detail)) == (None, None, {"expires_ms"})
    # Only its hash is kept: the code is nowhere in the catalog's files.
    for path in data.glob("catalog.sqlite3*"):
        assert code.encode() not in path.read_bytes()


def test_user_invite_expires_as_asked(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "user", "invite", "--data", data, "--expires", "2h")
    assert status == 0
    (created,) = audit_events(data, "invitation_created")
    assert abs(created.detail["expires_ms"] - (created.time_ms + 7_200_000)) < NOW_SLACK_MS
    with open_catalog(data) as catalog:
        accounts = Accounts(catalog, hasher=ADMIN_HASHER)
        # In three hours the code no longer holds.
        code_hash = secret_hash(out.strip().encode())
        with pytest.raises(InvitationError):
            catalog.add_user("erin", "hash", now_ms() + 3 * 3_600_000, invitation=code_hash)
        assert accounts.register("erin", "erin's password", mode="invite", invitation=out.strip())


@pytest.mark.parametrize("expires", ["7x", "0d", "400d", "", "-1d", "1.5d", "d", "1d 12"])
def test_user_invite_refuses_a_bad_expiry(
    data: Path, expires: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "user", "invite", "--data", data, "--expires", expires)
    assert status == 2 and out == ""
    assert "Invalid value for '--expires'" in err
    assert audit_events(data, "invitation_created") == []
    with open_catalog(data) as catalog:
        assert catalog.audit_events() == []


def test_user_invite_refuses_a_folder_without_a_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = tmp_path / "nowhere"
    assert "does not exist" in fails(capsys, "user", "invite", "--data", nowhere)
    assert not nowhere.exists()


@pytest.mark.parametrize(
    ("registration", "warning"),
    [
        ("closed", 'has registration = "closed": nobody can register with this code'),
        ("open", 'has registration = "open": anyone may register without a code'),
        ("invite", None),
    ],
)
def test_user_invite_checks_the_servers_settings(
    data: Path,
    tmp_path: Path,
    registration: str,
    warning: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "imgshare.toml"
    config.write_text(f'[server]\ndata = "{data}"\nregistration = "{registration}"\n')
    status, out, err = run(capsys, "user", "invite", "--config", config)  # data from the file
    assert status == 0 and out.startswith("imgshare-invite-")
    if warning is None:
        assert "warning" not in err and f'{config} has registration = "invite"' in err
    else:
        assert err.startswith(f"imgshare: warning: {config} {warning}")
    assert len(audit_events(data, "invitation_created")) == 1


def test_user_invite_with_a_broken_config_says_so(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "imgshare.toml"
    config.write_text('registration = "by invitation"\n')
    err = fails(capsys, "user", "invite", "--data", data, "--config", config)
    assert "registration must be 'closed', 'invite' or 'open'" in err
    assert "cannot read config file" in fails(
        capsys, "user", "invite", "--data", data, "--config", tmp_path / "missing.toml"
    )
    assert audit_events(data, "invitation_created") == []


def store_image(data: Path, owner: str) -> tuple[Path, Path]:
    """An image row of ``owner`` with its object and inbox copy; return the two files."""
    with open_store(StoreConfig(data=data, storage_key=None, inbox=True)) as store:
        found = store.catalog.get_user_by_name(owner)
        assert found is not None
        record = make_record(found)
        assert record.inbox_name is not None
        with store.blobs.create(record.id) as writer:
            writer.write(b"sealed bytes")
            writer.commit()
        copy = store.inbox.create_file(owner, record.inbox_name)
        copy.write(b"plaintext bytes")
        copy.commit()
        store.catalog.add_image(record)
        return store.blobs.path_of(record.id), store.inbox.path_of(owner, record.inbox_name)


def test_user_remove_purge_deletes_the_images_and_is_audited(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [*store_image(data, "alice"), *store_image(data, "alice")]
    bobs = store_image(data, "bob")
    assert all(path.exists() for path in files)
    err = fails(capsys, "user", "remove", "alice", "--data", data)
    assert "owns 2 image(s)" in err
    assert audit_events(data, "user_removed") == []  # refused: nothing happened

    status, out, _ = run(capsys, "user", "remove", "alice", "--purge", "--data", data)
    assert (status, out) == (0, "user alice removed with 2 image(s)\n")
    assert not any(path.exists() for path in files)
    assert not (data / "inbox" / "alice").exists()
    assert all(path.exists() for path in bobs)
    with open_catalog(data) as catalog:
        assert catalog.get_user_by_name("alice") is None
        assert len(catalog.image_ids()) == 1
    (removed,) = audit_events(data, "user_removed")
    assert (removed.user_name, removed.detail) == ("alice", {"purge": True, "images_deleted": 2})


def test_user_remove_without_images_and_with_a_typo(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "no user named 'bbo'" in fails(capsys, "user", "remove", "bbo", "--data", data)
    nowhere = tmp_path / "nowhere"
    assert "does not exist" in fails(capsys, "user", "remove", "bob", "--data", nowhere)
    assert not nowhere.exists()
    status, out, _ = run(capsys, "user", "remove", "bob", "--data", data)
    assert (status, out) == (0, "user bob removed\n")
    (removed,) = audit_events(data, "user_removed")
    assert removed.detail == {"purge": False, "images_deleted": 0}


def test_user_list_refuses_a_folder_without_a_catalog(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "user", "list", "--data", data)
    assert status == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["alice", "bob"]
    assert "does not exist" in fails(capsys, "user", "list", "--data", tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def record_events(data: Path) -> None:
    with open_catalog(data) as catalog:
        catalog.audit("login", "alice", "192.0.2.7", 1_800_000_000_000, method="password")
        catalog.audit("login_failed", "eve\n\x1b[31mroot\u202e", "2001:db8::/64", 1_800_000_001_000)
        catalog.audit(
            "share_granted",
            "alice",
            "192.0.2.7",
            1_800_000_002_000,
            image="ab" * 16,
            to="bob",
            expires_ms=0,
        )
        catalog.audit(
            "token_created", "bob", None, 1_800_000_003_000, token_id=7, name="my\tlaptop pc"
        )


def test_audit_shows_a_table_with_names_escaped(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_events(data)
    status, out, err = run(capsys, "audit", "--data", data)
    assert (status, err) == (0, "")
    heading, *lines = out.splitlines()
    assert heading.split() == ["TIME", "(UTC)", "EVENT", "USER", "NETWORK", "DETAILS"]
    assert len(lines) == 4  # one line each: no name could add one
    assert lines[0].split() == [
        "2027-01-15",
        "08:00:00Z",
        "login",
        "alice",
        "192.0.2.7",
        "method=password",
    ]
    assert "eve\\x0a\\x1b[31mroot\\u202e" in lines[1] and "2001:db8::/64" in lines[1]
    assert "\x1b" not in out and "\u202e" not in out and "\t" not in out
    assert "expires=never image=" + "ab" * 16 + " to=bob" in lines[2]
    assert re.search(r' bob +- +name="my\\x09laptop pc" token_id=7$', lines[3]), lines[3]
    # the columns line up
    assert len({line.index("login") for line in lines[:2]}) == 1


def test_audit_as_json_one_object_per_line(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record_events(data)
    status, out, _ = run(capsys, "audit", "--data", data, "--json")
    assert status == 0
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["event"] for o in objects] == [
        "login",
        "login_failed",
        "share_granted",
        "token_created",
    ]
    assert objects[0] == {
        "id": objects[0]["id"],
        "time": "2027-01-15T08:00:00.000Z",
        "time_ms": 1_800_000_000_000,
        "event": "login",
        "user": "alice",
        "network": "192.0.2.7",
        "detail": {"method": "password"},
    }
    assert objects[1]["user"] == "eve\n\x1b[31mroot\u202e"  # exact, JSON-escaped on the line
    assert "\x1b" not in out and "\n" not in out.replace("}\n", "}")
    assert objects[3]["network"] is None


def test_audit_filters_and_limits(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record_events(data)
    status, out, _ = run(capsys, "audit", "--data", data, "--json", "--user", "alice")
    assert status == 0
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["login", "share_granted"]
    status, out, _ = run(capsys, "audit", "--data", data, "--json", "--event", "token_created")
    assert status == 0
    assert [json.loads(line)["user"] for line in out.splitlines()] == ["bob"]
    status, out, err = run(capsys, "audit", "--data", data, "--json", "--limit", "2")
    assert status == 0
    assert [json.loads(line)["event"] for line in out.splitlines()] == [
        "share_granted",
        "token_created",
    ]
    assert "the newest 2 events" in err
    status, out, err = run(capsys, "audit", "--data", data, "--json", "--limit", "4")
    assert (
        status == 0 and len(out.splitlines()) == 4 and err == ""
    )  # all of them: nothing more to say


def test_audit_says_when_nothing_matches(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record_events(data)
    status, out, err = run(capsys, "audit", "--data", data, "--user", "alcie")
    assert (status, out) == (0, "")
    assert err == "no audit events for user 'alcie' (and no user named 'alcie' now)\n"
    status, out, err = run(capsys, "audit", "--data", data, "--event", "image_deleted")
    assert (status, out, err) == (0, "", "no audit events for event image_deleted\n")


def test_audit_refuses_bad_arguments(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "does not exist" in fails(capsys, "audit", "--data", tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    for args in (["--event", "login_faild"], ["--limit", "0"], ["--limit", "x"]):
        status, out, err = run(capsys, "audit", "--data", data, *args)
        assert status == 2 and out == "" and "Invalid value" in err


def test_admin_commands_work_while_a_server_holds_the_folder(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = DataFolderLock.acquire(data)
    try:
        with open_catalog(data) as server_catalog:  # the server's own connection
            server_catalog.audit("login", "alice", "192.0.2.7", now_ms(), method="password")
            status, out, _ = run(capsys, "audit", "--data", data, "--json")
            assert status == 0 and json.loads(out)["event"] == "login"
            status, out, _ = run(capsys, "user", "invite", "--data", data)
            assert status == 0 and out.startswith("imgshare-invite-")
            assert len(server_catalog.audit_events()) == 2  # the server sees it at once
    finally:
        lock.release()


def test_every_event_the_code_records_can_be_asked_for() -> None:
    """``imgshare audit --event`` offers each event name that src/ records."""
    source = Path(__file__).parents[2] / "src" / "imgshare"
    recorded: set[str] = set()
    for path in source.rglob("*.py"):
        text = path.read_text()
        # catalog.audit("event", ...) or, batched in the server, audit.record("event", ...)
        recorded |= set(re.findall(r'\.audit(?:\.record)?\(\s*"([a-z_]+)"', text))
    assert len(recorded) >= 12
    assert recorded == set(EVENTS)
