"""Every bad input gets its clear error and leaves nothing behind (issue 4, "Done when").

"Nothing behind": no new file under DATA/objects, DATA/inbox (its ``.tmp`` included)
or DATA/tmp, and no catalog row. Where the server cleans up after the answer (the
connection ends first), the tests poll with a deadline.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    PASSWORD,
    RunningServer,
    catalog_images,
    decompression_bomb_png,
    flip_bit,
    inbox_files,
    noise_image,
    png_of_exact_size,
    server_hmacs,
    truncated_jpeg,
    wait_until,
)

from imgshare.client import ClientSession
from imgshare.errors import PeerError
from imgshare.logs import HumanFormatter
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode
from imgshare.server.answers import Answers
from imgshare.server.session import Session

MIB = 1024 * 1024


def _nothing_left(server: RunningServer, before: set[str], rows: int = 0) -> bool:
    return server.files() == before and len(catalog_images(server.data)) == rows


def _assert_nothing_left(server: RunningServer, before: set[str], rows: int = 0) -> None:
    """Poll until the upload's traces are gone (the server may still be closing)."""
    wait_until(lambda: _nothing_left(server, before, rows), timeout=5.0)
    assert server.files() == before
    assert len(catalog_images(server.data)) == rows


def _refused(client: ClientSession, path: Path) -> PeerError:
    with pytest.raises(PeerError) as caught:
        client.upload(path)
    return caught.value


# --- images that are not acceptable ------------------------------------------------------


def test_not_an_image(server: RunningServer, client: ClientSession, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("just some text, no picture\n" * 400)  # several chunks' worth
    before = server.files()
    error = _refused(client, text)
    assert error.code == ErrorCode.NOT_AN_IMAGE
    assert "not an image" in str(error)
    _assert_nothing_left(server, before)
    assert client.list_images() == []  # non-fatal: the session goes on


def test_truncated_jpeg(server: RunningServer, client: ClientSession, tmp_path: Path) -> None:
    path = truncated_jpeg(tmp_path / "cut.jpg")
    before = server.files()
    error = _refused(client, path)
    assert error.code == ErrorCode.NOT_AN_IMAGE
    assert "truncated or corrupt" in str(error)
    _assert_nothing_left(server, before)


def test_decompression_bomb(server: RunningServer, client: ClientSession, tmp_path: Path) -> None:
    path = decompression_bomb_png(tmp_path / "bomb.png", 20_000, 20_000)
    assert path.stat().st_size < 200_000  # 400 Mpx in a small file
    before = server.files()
    error = _refused(client, path)
    assert error.code == ErrorCode.NOT_AN_IMAGE
    assert "400000000 pixels" in str(error)
    assert "limit is 100000000" in str(error)
    _assert_nothing_left(server, before)


def test_pixel_limit_is_a_setting(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = make_server(max_pixels=1000)
    client = server.login()
    before = server.files()
    error = _refused(client, noise_image(tmp_path / "wide.png", "PNG", (40, 30)))
    assert error.code == ErrorCode.NOT_AN_IMAGE
    assert "limit is 1000" in str(error)
    _assert_nothing_left(server, before)
    client.upload(noise_image(tmp_path / "ok.png", "PNG", (25, 40)))  # exactly 1000


def test_over_the_size_cap_is_refused_at_upload_begin(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    cap = 3 * MIB
    server = make_server(max_image_size=cap)
    client = server.login()
    path = png_of_exact_size(tmp_path / "over.png", cap + 1)
    before = server.files()
    error = _refused(client, path)
    assert error.code == ErrorCode.TOO_LARGE
    assert str(cap) in str(error)
    _assert_nothing_left(server, before)


def test_over_the_size_cap_is_fatal(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """TOO_LARGE for the image size comes as soon as UPLOAD_BEGIN arrives, fatally."""
    server = make_server(max_image_size=4096)
    data = png_of_exact_size(tmp_path / "over.png", 4097).read_bytes()
    with server.raw() as raw:
        raw.login("alice")
        answer = raw.begin_upload(raw.prepare_upload(data))
        assert isinstance(answer, ev.Error)
        assert (answer.code, answer.fatal) == (ErrorCode.TOO_LARGE, True)
        assert raw.closed_by_server()
    wait_until(lambda: server.server.open_connections == 0)


# --- tampering and broken streams -----------------------------------------------------


@pytest.mark.parametrize("where", ["first", "last"])
def test_tampered_chunk_is_fatal_integrity_failure(
    where: str, server: RunningServer, tmp_path: Path
) -> None:
    data = noise_image(tmp_path / "t.png", "PNG", (64, 64)).read_bytes()
    before = server.files()
    with server.raw() as raw:
        raw.login("alice")
        upload = raw.prepare_upload(data, chunk_size=4096)
        count = len(upload.chunks)
        assert count >= 3
        bad = 0 if where == "first" else count - 1
        assert isinstance(raw.begin_upload(upload), ev.UploadReady)
        for index in range(bad):
            raw.send_chunk(upload, index)
        raw.send_chunk(upload, bad, flip_bit(upload.chunks[bad], 100))
        answer = raw.receive()
        assert isinstance(answer, ev.Error)
        assert (answer.code, answer.fatal) == (ErrorCode.INTEGRITY_FAILED, True)
        assert raw.closed_by_server()  # a fatal error ends the connection
    _assert_nothing_left(server, before)
    wait_until(lambda: server.server.open_connections == 0)


def test_wrong_hmac_is_fatal_integrity_failure(server: RunningServer, tmp_path: Path) -> None:
    data = noise_image(tmp_path / "h.png", "PNG", (64, 64)).read_bytes()
    before = server.files()
    with server.raw() as raw:
        raw.login("alice")
        upload = raw.prepare_upload(data, chunk_size=4096)
        assert isinstance(raw.begin_upload(upload), ev.UploadReady)
        for index in range(len(upload.chunks)):
            raw.send_chunk(upload, index)
        raw.send(ev.UploadEnd(flip_bit(upload.hmac, 31)))
        answer = raw.receive()
    assert isinstance(answer, ev.Error)
    assert (answer.code, answer.fatal) == (ErrorCode.INTEGRITY_FAILED, True)
    _assert_nothing_left(server, before)


def test_truncated_stream_leaves_nothing(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two of N chunks, then the client closes its side (TCP FIN)."""
    data = noise_image(tmp_path / "s.png", "PNG", (64, 64)).read_bytes()
    before = server.files()
    with server.raw() as raw:
        raw.login("alice")
        upload = raw.prepare_upload(data, chunk_size=4096)
        assert len(upload.chunks) >= 4
        assert isinstance(raw.begin_upload(upload), ev.UploadReady)
        raw.send_chunk(upload, 0)
        raw.send_chunk(upload, 1)
        # wait until the server has the chunks in temp files, so the test is not vacuous
        wait_until(lambda: any(p.endswith(".part") for p in server.files()))
    _assert_nothing_left(server, before)
    wait_until(lambda: server.server.open_connections == 0)
    messages = [r.getMessage() for r in caplog.records if r.name == "imgshare.server.network"]
    assert any("closed in state 'uploading'" in m for m in messages), messages


def test_client_vanishing_mid_upload_leaves_nothing(server: RunningServer, tmp_path: Path) -> None:
    """Some chunks, then a TCP reset without a goodbye."""
    data = noise_image(tmp_path / "v.png", "PNG", (64, 64)).read_bytes()
    before = server.files()
    raw = server.raw()
    raw.login("alice")
    upload = raw.prepare_upload(data, chunk_size=4096)
    assert isinstance(raw.begin_upload(upload), ev.UploadReady)
    for index in range(3):
        raw.send_chunk(upload, index)
    wait_until(lambda: any(p.endswith(".part") for p in server.files()))
    raw.vanish()
    _assert_nothing_left(server, before)
    wait_until(lambda: server.server.open_connections == 0)
    # the server is fine: the next client uploads normally
    result = server.login().upload(noise_image(tmp_path / "next.png", "PNG", seed=9))
    assert [row["id"] for row in catalog_images(server.data)] == [result.id]


def test_rejected_upload_logs_the_hmac_then_the_reason(
    server: RunningServer, client: ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = tmp_path / "plain.txt"
    text.write_text("hello\n")
    with pytest.raises(PeerError):
        client.upload(text)
    assert len(server_hmacs(caplog.records)) == 1  # the stream itself verified
    assert any(
        r.getMessage().startswith("upload rejected: not an image")
        for r in caplog.records
        if r.name == "imgshare.server.session"
    )


# --- accounts and permissions ---------------------------------------------------------


def test_wrong_password_and_unknown_user_get_the_same_answer(server: RunningServer) -> None:
    session = server.connect()
    answers = []
    for username, password in [("alice", "wrong password!"), ("mallory", PASSWORD)]:
        with pytest.raises(PeerError) as caught:
            session.login(username, password)
        answers.append((caught.value.code, str(caught.value)))
    assert answers[0] == answers[1]
    assert answers[0] == (ErrorCode.AUTH_FAILED, "server: invalid username or password")
    assert session.login("alice", PASSWORD) == "alice"  # not fatal


def test_too_many_failed_logins_end_the_connection(server: RunningServer) -> None:
    with server.raw() as raw:
        for attempt in range(5):
            raw.send(ev.Login("alice", f"wrong password {attempt}"))
            answer = raw.receive()
            assert isinstance(answer, ev.Error) and answer.code == ErrorCode.AUTH_FAILED
        assert answer.fatal
        assert answer.message == "too many failed logins"
        assert raw.closed_by_server()


def test_request_before_login(server: RunningServer, tmp_path: Path) -> None:
    session = server.connect()
    path = noise_image(tmp_path / "early.png", "PNG")
    before = server.files()
    for request in (
        session.list_images,
        lambda: session.upload(path),
        lambda: session.download("00" * 16, tmp_path / "x.png"),
    ):
        with pytest.raises(PeerError) as caught:
            request()
        assert caught.value.code == ErrorCode.AUTH_REQUIRED
        assert "log in first" in str(caught.value)
    _assert_nothing_left(server, before)
    session.login("alice", PASSWORD)
    assert session.list_images() == []


def test_download_of_another_users_image_is_not_found(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = make_server(users=("alice", "bob"))
    alice, bob = server.login("alice"), server.login("bob")
    result = alice.upload(noise_image(tmp_path / "mine.png", "PNG"))
    answers = []
    for image_id in (result.id, "ab" * 16):  # hers, and one that does not exist
        out = tmp_path / f"{image_id}.png"
        with pytest.raises(PeerError) as caught:
            bob.download(image_id, out)
        answers.append((caught.value.code, str(caught.value)))
        assert not out.exists()
        assert not list(tmp_path.glob(f".{out.name}.*"))  # no partial file either
    assert answers[0] == answers[1]  # no hint that the image exists
    assert answers[0][0] == ErrorCode.NOT_FOUND
    assert bob.list_images() == []


def test_quota_exceeded(make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    first = noise_image(tmp_path / "q1.png", "PNG", (60, 60), seed=1)
    second = noise_image(tmp_path / "q2.png", "PNG", (60, 60), seed=2)
    quota = first.stat().st_size + second.stat().st_size - 1
    server = make_server(quota_bytes=quota)
    client = server.login()
    client.upload(first)
    before = server.files()
    error = _refused(client, second)
    assert error.code == ErrorCode.QUOTA_EXCEEDED
    assert str(quota) in str(error)
    _assert_nothing_left(server, before, rows=1)
    assert len(client.list_images()) == 1  # non-fatal
    tiny = noise_image(tmp_path / "q3.png", "PNG", (1, 1))
    client.upload(tiny)  # what still fits is accepted


def test_quota_counts_uploads_still_arriving(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    # Two uploads that each fit but not together: the second must be refused while
    # the first is still arriving, not only once it is stored.
    first = noise_image(tmp_path / "f1.png", "PNG", (60, 60), seed=1).read_bytes()
    second = noise_image(tmp_path / "f2.png", "PNG", (60, 60), seed=2)
    server = make_server(quota_bytes=len(first) + second.stat().st_size - 1)
    other = server.login()
    with server.raw() as raw:
        raw.login("alice")
        upload = raw.prepare_upload(first, "first.png")
        assert isinstance(raw.begin_upload(upload), ev.UploadReady)
        raw.send_chunk(upload, 0)
        error = _refused(other, second)  # same user, another connection, meanwhile
        assert error.code == ErrorCode.QUOTA_EXCEEDED
        raw.vanish()  # the first upload is thrown away: its share of the quota returns
    wait_until(lambda: not catalog_images(server.data) and _accepts(other, second), timeout=5.0)
    assert [image.name for image in other.list_images()] == [second.name]


def _accepts(client: ClientSession, path: Path) -> bool:
    try:
        client.upload(path)
    except PeerError as exc:
        assert exc.code == ErrorCode.QUOTA_EXCEEDED
        return False
    return True


def test_requests_about_an_unknown_image_are_refused_politely(server: RunningServer) -> None:
    with server.raw() as raw:
        raw.login("alice")
        unknown = b"\x01" * 16
        for request in (ev.Share(unknown, "bob"), ev.Delete(unknown), ev.Shares(unknown)):
            raw.send(request)
            answer = raw.receive()
            assert isinstance(answer, ev.Error)
            assert (answer.code, answer.fatal) == (ErrorCode.NOT_FOUND, False)
        raw.send(ev.ListImages())
        assert isinstance(raw.receive(), ev.ImageList)


def test_rejections_are_logged_without_secrets(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    session = server.connect()
    with pytest.raises(PeerError):
        session.login("alice", "hunter2-wrong-password")
    text = "\n".join(
        f"{r.getMessage()} {getattr(r, 'fields', '')}"
        for r in caplog.records
        if r.name.startswith("imgshare")
    )
    assert "login failed" in text
    assert "hunter2" not in text
    assert PASSWORD not in text
    assert all(r.levelno < logging.ERROR for r in caplog.records)


# --- client text is data, never a path or a log line --------------------------------------


def test_client_file_name_is_never_a_path(
    server: RunningServer, client: ClientSession, tmp_path: Path
) -> None:
    path = noise_image(tmp_path / "innocent.png", "PNG")
    result = client.upload(path, name="../../../escape.png")
    assert result.name == "../../../escape.png"  # kept as metadata
    copies = inbox_files(server.data, "alice")  # the server made the name
    assert len(copies) == 1
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{result.id}\.png", copies[0].name)
    assert copies[0].read_bytes() == path.read_bytes()
    assert not list(tmp_path.rglob("escape.png"))
    assert not list(server.data.parent.rglob("escape.png"))
    assert client.list_images()[0].name == "../../../escape.png"


def test_client_file_name_cannot_forge_a_log_line(
    server: RunningServer, client: ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "x.png\n2030-01-01T00:00:00.000Z INFO    login  peer=203.0.113.9:1 user=admin"
    client.upload(noise_image(tmp_path / "x.png", "PNG"), name=forged)
    received = [r for r in caplog.records if r.getMessage() == "image received"]
    assert len(received) == 1
    assert "\n" not in HumanFormatter().format(received[0])


# --- a bug in a request handler -------------------------------------------------------------


def test_a_bug_in_a_handler_is_a_fatal_internal_error_and_the_server_goes_on(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(session: Session, event: ev.Event) -> Answers:
        raise ZeroDivisionError("a bug")
        yield  # a generator, like every handler

    monkeypatch.setitem(Session.HANDLERS, ev.Shares, broken)
    with server.raw() as raw:
        raw.login("alice")
        raw.send(ev.Shares(bytes(16)))
        answer = raw.receive()
        assert isinstance(answer, ev.Error)
        assert (answer.code, answer.fatal) == (ErrorCode.INTERNAL, True)
        assert "a bug" not in answer.message  # the details stay in the server's log
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)
    with server.raw() as raw:  # the next connection is served as usual
        raw.login("alice")
        raw.send(ev.ListImages())
        assert isinstance(raw.receive(), ev.ImageList)
