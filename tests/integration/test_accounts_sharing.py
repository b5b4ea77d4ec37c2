"""Accounts and sharing, end to end (issue 11, "Done when"): the real ``imgshare``
console script and ``ClientSession`` against the real server over TLS on 127.0.0.1.

Each person has a profile file of their own in ``tmp_path`` (``IMGSHARE_CONFIG``);
after ``imgshare login`` their commands carry no flags at all. What the server did is
checked where it lives: files under the data folder, rows of the catalog, and the
audit trail (``catalog.audit_events()``).
"""

from __future__ import annotations

import hashlib
import json
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    PASSWORD,
    RunningServer,
    catalog_image,
    imgshare,
    inbox_files,
    noise_image,
    object_path,
    wait_until,
)

from imgshare import pki
from imgshare.client import ClientSession
from imgshare.errors import PeerError, TransportError
from imgshare.protocol.constants import ErrorCode, ListScope
from imgshare.server.credentials import new_invitation
from imgshare.store.access import AuditRecord
from imgshare.store.catalog import now_ms

ZERO_ID = "0" * 32


# --- helpers --------------------------------------------------------------------------------


class Person:
    """Someone at a terminal: their own folder, profile and password file."""

    def __init__(self, name: str, server: RunningServer, home: Path) -> None:
        self.name = name
        self.server = server
        self.home = home / name
        self.home.mkdir()
        self.profile = self.home / "profile.json"
        self.password_file = self.home / "password.txt"
        self.password_file.write_text(PASSWORD + "\n")

    def run(self, *args: str | Path, env: dict[str, str] | None = None) -> Any:
        """Run ``imgshare ARGS`` in this person's folder, with their profile."""
        return imgshare(
            *args, cwd=self.home, env={"IMGSHARE_CONFIG": str(self.profile), **(env or {})}
        )

    def ok(self, *args: str | Path, env: dict[str, str] | None = None) -> Any:
        result = self.run(*args, env=env)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def fails(self, *args: str | Path) -> str:
        """Run a command that must fail with one line on stderr; return that line."""
        result = self.run(*args)
        assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("imgshare: error: "), result.stderr
        assert "Traceback" not in result.stderr
        return lines[0].removeprefix("imgshare: error: ")

    def flags(self) -> list[str]:
        """What a command needs before `imgshare login`."""
        return [
            "--server",
            f"localhost:{self.server.port}",
            "--ca",
            str(self.server.ca),
            "--user",
            self.name,
            "--password-file",
            str(self.password_file),
        ]

    def login(self) -> Any:
        return self.ok("login", *self.flags())

    def saved(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.profile.read_text())
        return loaded


@pytest.fixture
def people(tmp_path: Path) -> Callable[[RunningServer, str], Person]:
    home = tmp_path / "people"
    home.mkdir()
    return lambda server, name: Person(name, server, home)


def audit(server: RunningServer, **where: str) -> list[AuditRecord]:
    server.server.service.audit.flush()  # the writer batches them
    return server.server.service.catalog.audit_events(**where)


def events(server: RunningServer) -> set[str]:
    return {record.event for record in audit(server)}


def send_json(person: Person, path: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(person.ok("send", "--json", path).stdout)
    return record


def not_found(session: ClientSession, image_id: str, tmp_path: Path) -> str:
    """Fetch ``image_id`` expecting NOT_FOUND; return the server's message."""
    with pytest.raises(PeerError) as caught:
        session.download(image_id, tmp_path / f"never-{time.monotonic_ns()}")
    assert caught.value.code is ErrorCode.NOT_FOUND
    return str(caught.value)


# --- registration ---------------------------------------------------------------------------


def test_an_invited_user_registers_then_logs_in_once(
    make_server: Callable[..., RunningServer],
    people: Callable[[RunningServer, str], Person],
    tmp_path: Path,
) -> None:
    server = make_server(users=("alice",), registration="invite")
    dave = people(server, "dave")
    register = ["register", *dave.flags()]
    # without an invitation, and with a made-up one: refused, saying what to do
    refused = dave.fails(*register)
    assert refused == (
        "cannot register dave: server: this server registers by invitation only: give its "
        "code with --invite CODE"
    )
    refused = dave.fails(*register, "--invite", "imgshare-invite-made-up")
    assert "invalid, used or expired invitation" in refused
    # the administrator's code works once
    code = new_invitation(server.server.service.catalog, now_ms(), now_ms() + 60_000)
    registered = dave.ok(*register, "--invite", code)
    assert registered.stdout.startswith(f"registered dave on localhost:{server.port}")
    assert "imgshare login --server" in registered.stdout
    erin = people(server, "erin")
    assert "invalid, used or expired" in erin.fails("register", *erin.flags(), "--invite", code)
    # a name that is taken
    other = new_invitation(server.server.service.catalog, now_ms(), now_ms() + 60_000)
    taken = dave.fails(*register, "--invite", other)
    assert "the name 'dave' is taken" in taken
    assert "choose another --user name" in taken
    # dave logs in once; from then on nothing but the command itself
    logged_in = dave.login()
    assert f"logged in as dave on localhost:{server.port}" in logged_in.stdout
    assert str(dave.profile) in logged_in.stdout
    image = noise_image(tmp_path / "dave.png", "PNG")
    sent = send_json(dave, image)
    assert [line.split()[0] for line in dave.ok("list").stdout.splitlines()] == [sent["id"]]
    registrations = audit(server, event="registered")
    assert [(r.user_name, r.detail["mode"]) for r in registrations] == [("dave", "invite")]


# --- log in once ----------------------------------------------------------------------------


def test_login_saves_a_private_profile_and_later_commands_use_it(
    server: RunningServer, people: Callable[[RunningServer, str], Person], tmp_path: Path
) -> None:
    alice = people(server, "alice")
    alice.login()
    # the profile: mode 0600, self-contained, no password
    assert stat.S_IMODE(alice.profile.stat().st_mode) == 0o600
    saved = alice.saved()
    assert (saved["server"], saved["user"]) == (f"localhost:{server.port}", "alice")
    assert saved["ca_pem"] == server.ca.read_text()
    assert saved["token"].startswith("imgshare-token-")
    assert PASSWORD not in alice.profile.read_text()
    # the token is stored hashed on the server, and named after this machine
    (listed,) = map(json.loads, alice.ok("token", "list", "--json").stdout.splitlines())
    assert listed["id"] == saved["token_id"]
    assert listed["name"].startswith("cli on ")
    assert listed["this_profile"] is True
    # later commands: no flags, a token login each (no password anywhere)
    logins_before = len(audit(server, event="login"))
    image = noise_image(tmp_path / "a.png", "PNG")
    sent = send_json(alice, image)
    fetched = alice.ok("get", sent["id"], "-o", alice.home / "copy.png", "--json")
    assert json.loads(fetched.stdout)["hmac"] == sent["hmac"]
    assert (alice.home / "copy.png").read_bytes() == image.read_bytes()
    logins = audit(server, event="login")[logins_before:]
    assert [(r.user_name, r.detail["method"]) for r in logins] == [("alice", "token")] * 2
    # flags still override: a password login (another user, same server and CA)
    bob = server.add_user("bob")
    listed_as_bob = alice.ok("list", "--user", bob.name, "--password-file", alice.password_file)
    assert listed_as_bob.stdout == ""
    assert audit(server, event="login")[-1].detail["method"] == "password"


def test_logout_revokes_the_token_and_forgets_it(
    server: RunningServer, people: Callable[[RunningServer, str], Person]
) -> None:
    alice = people(server, "alice")
    alice.login()
    token, token_id = alice.saved()["token"], alice.saved()["token_id"]
    out = alice.ok("logout").stdout
    assert f"token {token_id} on localhost:{server.port} is revoked" in out
    saved = alice.saved()
    assert saved["token"] is None and saved["token_id"] is None
    assert token not in alice.profile.read_text()
    assert stat.S_IMODE(alice.profile.stat().st_mode) == 0o600
    # the token no longer works anywhere
    with server.connect() as session, pytest.raises(PeerError) as caught:
        session.token_login(token)
    assert caught.value.code is ErrorCode.AUTH_FAILED
    # logged out: a clear message, no prompt; logging out again is harmless
    assert alice.fails("list") == (
        f"not logged in as alice on localhost:{server.port} (you logged out): run "
        "`imgshare login` to log in again, or pass --password-file"
    )
    assert alice.ok("logout").stdout.startswith("not logged in")
    # `imgshare login` alone logs in again: server, CA and user are remembered
    alice.ok("login", "--password-file", alice.password_file)
    assert alice.saved()["token_id"] != token_id
    revoked = audit(server, event="token_revoked")
    assert [(r.user_name, r.detail["token_id"]) for r in revoked] == [("alice", token_id)]


def test_logout_forgets_the_token_even_when_the_server_is_gone(
    server: RunningServer, people: Callable[[RunningServer, str], Person]
) -> None:
    alice = people(server, "alice")
    alice.login()
    token_id, port = alice.saved()["token_id"], server.port
    server.stop()
    message = alice.fails("logout")
    assert message.startswith(f"logged out here (the token is gone from {alice.profile})")
    assert f"token {token_id} of alice on localhost:{port} could NOT be revoked" in message
    assert "cannot connect" in message
    assert f"run `imgshare token revoke {token_id}`" in message
    assert alice.saved()["token"] is None


def test_login_again_revokes_the_previous_token(
    server: RunningServer, people: Callable[[RunningServer, str], Person]
) -> None:
    alice = people(server, "alice")
    alice.login()
    first = alice.saved()["token_id"]
    alice.login()
    ids = [
        json.loads(line)["id"] for line in alice.ok("token", "list", "--json").stdout.splitlines()
    ]
    assert ids == [alice.saved()["token_id"]]
    assert first not in ids


# --- tokens ------------------------------------------------------------------------------------


def test_revoked_and_expired_tokens_are_refused(
    server: RunningServer, people: Callable[[RunningServer, str], Person]
) -> None:
    alice = people(server, "alice")
    alice.login()
    # an API token for a script: shown once, on stdout alone
    made = alice.ok("token", "create", "--name", "ci job", "--expires", "30d")
    secret = made.stdout.strip()
    assert secret.startswith("imgshare-token-") and "\n" not in secret
    assert "shown only this once" in made.stderr
    assert alice.ok("list", env={"IMGSHARE_TOKEN": secret}).returncode == 0
    tokens = [json.loads(line) for line in alice.ok("token", "list", "--json").stdout.splitlines()]
    ci = next(t for t in tokens if t["name"] == "ci job")
    assert ci["expires"] is not None and ci["this_profile"] is False
    # revoked: refused at once, with a message that says what to do
    assert alice.ok("token", "revoke", str(ci["id"])).stdout.strip() == f"token {ci['id']} revoked"
    refused = alice.run("list", env={"IMGSHARE_TOKEN": secret})
    assert refused.returncode == 1
    assert "the token in IMGSHARE_TOKEN was refused" in refused.stderr
    assert "no such token" in alice.fails("token", "revoke", str(ci["id"]))
    # expired: refused once its time is up, like a revoked one
    with server.login("alice") as session:
        short = session.create_token("short", now_ms() + 1500)
    with server.connect() as session:
        assert session.token_login(short.secret) == "alice"
    host, port = server.address
    context, verifier = server.ssl_context(), server.verifier()
    with ClientSession.connect(
        host, port, context, verifier=verifier, token=short.secret
    ) as session:
        assert session.username == "alice"  # logged in within the handshake's last flight
        assert session.list_images() == []
    wait_until(lambda: now_ms() > short.expires_ms + 50, timeout=5)
    with server.connect() as session, pytest.raises(PeerError) as caught:
        session.token_login(short.secret)
    assert caught.value.code is ErrorCode.AUTH_FAILED
    assert str(caught.value) == "server: invalid or expired token"
    with pytest.raises(PeerError) as caught:
        ClientSession.connect(host, port, context, verifier=verifier, token=short.secret)
    assert caught.value.code is ErrorCode.AUTH_FAILED
    # the profile's own token, revoked from elsewhere: the next command says so
    with server.login("alice") as session:
        session.revoke_token(alice.saved()["token_id"])
    message = alice.fails("list")
    assert "your saved login as alice" in message and "run `imgshare login` again" in message
    # what the audit trail kept
    assert {"token_created", "token_revoked", "login", "login_failed"} <= events(server)
    failed = audit(server, event="login_failed")
    assert [r.detail["method"] for r in failed] == ["token"] * 4


def test_an_expired_profile_login_is_caught_before_connecting(
    server: RunningServer, people: Callable[[RunningServer, str], Person]
) -> None:
    alice = people(server, "alice")
    alice.ok("login", *alice.flags(), "--expires", "1s")
    wait_until(lambda: now_ms() > alice.saved()["token_expires_ms"], timeout=5)
    message = alice.fails("list")
    assert message.startswith(f"your login as alice on localhost:{server.port} expired at ")
    assert message.endswith("run `imgshare login` again")
    assert not audit(server, event="login_failed")  # it never asked the server


def test_passwd_keeps_this_login_and_can_end_the_others(
    server: RunningServer, people: Callable[[RunningServer, str], Person]
) -> None:
    alice = people(server, "alice")
    alice.login()
    other = alice.ok("token", "create").stdout.strip()
    new_password = alice.home / "new.txt"
    new_password.write_text("a brand new password\n")
    changed = alice.ok(
        "passwd",
        "--password-file",
        alice.password_file,
        "--new-password-file",
        new_password,
        "--revoke-other-tokens",
    )
    assert "changed" in changed.stdout and "this profile's login stays" in changed.stdout
    alice.ok("list")  # the profile's token still works
    with server.connect() as session, pytest.raises(PeerError):
        session.token_login(other)
    with server.connect() as session:
        assert session.login("alice", "a brand new password") == "alice"
    wrong = alice.fails(
        "passwd", "--password-file", alice.password_file, "--new-password-file", new_password
    )
    assert wrong.startswith("password not changed: server: invalid username or password")
    assert "password_changed" in events(server)


# --- sharing ------------------------------------------------------------------------------------


@pytest.fixture
def shared_server(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server(users=("alice", "bob", "carol"))


def test_alice_shares_with_bob_and_only_bob(
    shared_server: RunningServer,
    people: Callable[[RunningServer, str], Person],
    tmp_path: Path,
) -> None:
    server = shared_server
    alice, bob = people(server, "alice"), people(server, "bob")
    alice.login()
    bob.login()
    image = noise_image(tmp_path / "holiday.jpg", "JPEG", (80, 60), seed=3)
    sent = send_json(alice, image)
    image_id = sent["id"]
    # not shared yet: bob sees nothing and cannot fetch it
    assert bob.ok("list", "--shared-with-me").stdout == ""
    assert "no such image" in bob.fails("get", image_id)
    # shared: bob lists it, with its owner, and fetches it end to end
    shared = alice.ok("share", image_id, "--with", "bob").stdout
    assert shared.strip() == f"shared {image_id} with bob until you unshare it"
    listed = [
        json.loads(x) for x in bob.ok("list", "--shared-with-me", "--json").stdout.splitlines()
    ]
    assert [(e["id"], e["owner"], e["name"], e["hmac"]) for e in listed] == [
        (image_id, "alice", "holiday.jpg", sent["hmac"])
    ]
    text = bob.ok("list", "--shared-with-me").stdout.split()
    assert text[0] == image_id and "alice" in text
    assert bob.ok("list").stdout == ""  # his own images: none
    fetched = json.loads(bob.ok("get", image_id, "--json").stdout)
    copy = bob.home / "holiday.jpg"  # the name it was sent with
    assert copy.read_bytes() == image.read_bytes()
    assert fetched["hmac"] == sent["hmac"]  # the uploader's HMAC, checked by bob
    assert fetched["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest() == sent["sha256"]
    # who can see it
    shares = [json.loads(x) for x in alice.ok("shares", image_id, "--json").stdout.splitlines()]
    assert [(s["user"], s["expires"]) for s in shares] == [("bob", None)]
    # carol: NOT_FOUND, exactly as for an id that does not exist
    with server.login("carol") as carol:
        assert not_found(carol, image_id, tmp_path) == not_found(carol, ZERO_ID, tmp_path)
        assert list(carol.iter_images(ListScope.SHARED_WITH_ME)) == []
        with pytest.raises(PeerError) as caught:
            carol.shares(image_id)
        assert caught.value.code is ErrorCode.NOT_FOUND
    # only the owner shares and deletes: for bob it is not there
    assert "no such image" in bob.fails("share", image_id, "--with", "carol")
    assert "no such image" in bob.fails("delete", image_id, "--yes")
    # unshared: bob gets NOT_FOUND at once
    assert alice.ok("unshare", image_id, "--with", "bob").stdout.strip() == (
        f"{image_id} is no longer shared with bob"
    )
    message = bob.fails("get", image_id, "-o", bob.home / "again.jpg")
    assert message.startswith(f"cannot get {image_id}: server: no such image")
    assert not (bob.home / "again.jpg").exists()
    assert bob.ok("list", "--shared-with-me").stdout == ""
    assert "no such share" in alice.fails("unshare", image_id, "--with", "bob")
    granted = audit(server, event="share_granted")
    assert [(r.user_name, r.detail["to"], r.detail["image"]) for r in granted] == [
        ("alice", "bob", image_id)
    ]
    assert [r.detail["to"] for r in audit(server, event="share_revoked")] == ["bob"]


def test_an_expired_share_stops_at_once(
    shared_server: RunningServer, people: Callable[[RunningServer, str], Person], tmp_path: Path
) -> None:
    server = shared_server
    alice = server.login("alice")
    uploaded = alice.upload(noise_image(tmp_path / "soon.png", "PNG"))
    expires = now_ms() + 1500
    alice.share(uploaded.id, "bob", expires)
    with server.login("bob") as bob:
        assert bob.download(uploaded.id, tmp_path / "in-time.png").hmac == uploaded.hmac
        (entry,) = bob.iter_images(ListScope.SHARED_WITH_ME)
        assert entry.owner == "alice"
        wait_until(lambda: now_ms() > expires + 50, timeout=5)
        assert "no such image" in not_found(bob, uploaded.id, tmp_path)
        assert list(bob.iter_images(ListScope.SHARED_WITH_ME)) == []
    assert alice.shares(uploaded.id) == []
    # the housekeeping removes it and says so in the audit trail
    assert server.server.expire_shares() == 1
    (expired,) = audit(server, event="share_expired")
    assert (expired.user_name, expired.detail) == ("alice", {"image": uploaded.id, "to": "bob"})
    # the CLI: a share with an expiry says until when; a bad duration says what is wrong
    carol = people(server, "carol")
    carol.login()
    mine = send_json(carol, noise_image(tmp_path / "c.png", "PNG", seed=9))["id"]
    out = carol.ok("share", mine, "--with", "alice", "--expires", "7d").stdout
    assert out.startswith(f"shared {mine} with alice until 20")
    assert carol.fails("share", mine, "--with", "alice", "--expires", "7x") == (
        "--expires: '7x' is not a duration: write a number and a unit, "
        "e.g. 90s, 30m, 12h, 7d or 2w (or 1d12h)"
    )


def test_delete_leaves_nothing_on_disk(
    shared_server: RunningServer,
    people: Callable[[RunningServer, str], Person],
    tmp_path: Path,
) -> None:
    server = shared_server
    alice = people(server, "alice")
    alice.login()
    sent = send_json(alice, noise_image(tmp_path / "gone.png", "PNG"))
    image_id = sent["id"]
    alice.ok("share", image_id, "--with", "bob")
    assert object_path(server.data, image_id).is_file()
    assert len(inbox_files(server.data, "alice")) == 1
    row = catalog_image(server.data, image_id)
    assert row is not None and row["wrapped_key"]
    # it asks first; without a terminal it says how not to be asked
    assert alice.fails("delete", image_id) == (
        f"delete asks before it deletes: pass --yes to delete {image_id}"
    )
    assert object_path(server.data, image_id).is_file()
    assert alice.ok("delete", image_id, "--yes").stdout.strip() == f"deleted {image_id}"
    # gone from disk: the wrapped key (with its row), the object, the inbox copy
    assert catalog_image(server.data, image_id) is None
    assert not object_path(server.data, image_id).exists()
    assert inbox_files(server.data, "alice") == []
    # and nobody can fetch it
    with server.login("alice") as session:
        assert "no such image" in not_found(session, image_id, tmp_path)
    with server.login("bob") as session:
        assert "no such image" in not_found(session, image_id, tmp_path)
        assert list(session.iter_images(ListScope.SHARED_WITH_ME)) == []
    assert "no such image" in alice.fails("delete", image_id, "--yes")
    (deleted,) = audit(server, event="image_deleted")
    assert (deleted.user_name, deleted.detail["image"]) == ("alice", image_id)


def test_list_pages_through_everything(
    server: RunningServer, people: Callable[[RunningServer, str], Person], tmp_path: Path
) -> None:
    with server.login("alice") as session:
        ids = [
            session.upload(noise_image(tmp_path / f"{n}.png", "PNG", seed=n)).id for n in range(5)
        ]
        paged = [entry.image_id.hex() for entry in session.iter_images(page_size=2)]
        first = session.list_page(limit=2)
    assert paged == ids
    assert first.more and len(first.images) == 2
    alice = people(server, "alice")
    alice.login()
    assert [line.split()[0] for line in alice.ok("list").stdout.splitlines()] == ids


# --- mutual TLS ------------------------------------------------------------------------------


def test_client_certificates_log_in_and_another_ca_is_refused_by_tls(
    make_server: Callable[..., RunningServer],
    people: Callable[[RunningServer, str], Person],
    tmp_path: Path,
) -> None:
    clients = pki.init_certificates(tmp_path / "client-ca")
    right = pki.create_client_certificate(clients.directory, "alice")
    stranger = pki.init_certificates(tmp_path / "other-ca")
    wrong = pki.create_client_certificate(stranger.directory, "alice")
    server = make_server(client_ca=clients.ca_cert)
    alice = people(server, "alice")
    where = ["--server", f"localhost:{server.port}", "--ca", str(server.ca)]

    # the right CA: CERT_LOGIN, no password
    listed = alice.ok("list", *where, "--client-cert", right.cert, "--client-key", right.key)
    assert "you have no images yet" in listed.stderr
    (login,) = audit(server, event="login")
    assert (login.user_name, login.detail["method"]) == ("alice", "certificate")
    # imgshare login with the certificate keeps its paths for later commands
    alice.ok("login", *where, "--client-cert", right.cert, "--client-key", right.key)
    assert alice.saved()["client_cert"] == str(right.cert.resolve())
    alice.ok("list")
    assert audit(server, event="login")[-1].detail["method"] == "token"

    # another CA's certificate, or none: refused by TLS, before any imgshare message
    for extra in (["--client-cert", str(wrong.cert), "--client-key", str(wrong.key)], []):
        password = ["--user", "alice", "--password-file", str(alice.password_file)]
        result = imgshare("list", *where, *password, *extra, cwd=tmp_path)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith("imgshare: error: "), line
        assert f"localhost:{server.port} refused the TLS connection" in line
        assert ("does not accept the client certificate" in line) == bool(extra), line
        assert ("it wants a client certificate" in line) == (not extra), line
    from imgshare import tls

    context = tls.create_client_context(server.ca, client_cert=wrong.cert, client_key=wrong.key)
    with pytest.raises(TransportError):
        ClientSession.connect("127.0.0.1", server.port, context, verifier=server.verifier())
    assert len(audit(server, event="login")) == 3  # the refused ones never got that far


# --- the audit trail -----------------------------------------------------------------------------


def test_the_audit_trail_has_every_event_of_the_story(
    make_server: Callable[..., RunningServer],
    people: Callable[[RunningServer, str], Person],
    tmp_path: Path,
) -> None:
    server = make_server(users=("alice", "carol"), registration="invite")
    code = new_invitation(server.server.service.catalog, now_ms(), now_ms() + 60_000)
    bob = people(server, "bob")
    bob.ok("register", *bob.flags(), "--invite", code)
    alice = people(server, "alice")
    wrong = alice.home / "wrong.txt"
    wrong.write_text("not the password\n")
    assert alice.run("list", *alice.flags()[:-1], str(wrong)).returncode == 1
    alice.login()
    bob.login()
    image_id = send_json(alice, noise_image(tmp_path / "x.png", "PNG"))["id"]
    alice.ok("share", image_id, "--with", "bob")
    bob.ok("get", image_id)
    alice.ok("unshare", image_id, "--with", "bob")
    with server.login("alice") as session:
        session.share(image_id, "bob", now_ms() + 300)
    wait_until(lambda: server.server.expire_shares(), timeout=5)
    alice.ok("delete", image_id, "--yes")
    alice.ok("logout")
    assert {
        "registered",
        "login",
        "login_failed",
        "token_created",
        "token_revoked",
        "share_granted",
        "share_revoked",
        "share_expired",
        "image_deleted",
    } <= events(server)
    trail = [(r.event, r.user_name) for r in audit(server)]
    assert ("login_failed", "alice") in trail
    assert ("registered", "bob") in trail
    assert trail[-1] == ("token_revoked", "alice")
