"""Resumable uploads (docs/protocol.md, section 7.10), against the real server.

An upload is cut (a dropped connection; the client process killed mid-upload) and the
same upload is sent again: it goes on from the last chunk the server made durable and
ends with exactly one intact copy (the download is byte-identical, the catalog has one
row, no partial object is left). A file that changed in between starts afresh with a
new content key; another user cannot resume it; an expired one is swept; a resume
lands on another worker process just as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    PASSWORD,
    RawClient,
    RunningServer,
    ServeProcess,
    add_users,
    catalog_images,
    noise_image,
    wait_until,
)

from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier
from imgshare.client.resume import ResumeStore
from imgshare.errors import PeerError
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode
from imgshare.protocol.stream import UploadHeader
from imgshare.store import open_catalog
from imgshare.store.resumable import PartialUpload

#: The server makes an upload durable this often: after every 256 KiB chunk here.
SYNC = 64 * 1024
Factory = Callable[..., RunningServer]


def big_image(tmp_path: Path, name: str = "big.bmp", seed: int = 3) -> Path:
    """A noise BMP of 3,000,054 bytes whatever the seed: 12 chunks of 256 KiB."""
    return noise_image(tmp_path / name, "BMP", (1000, 1000), seed=seed)


def partials(data: Path) -> list[PartialUpload]:
    with open_catalog(data) as catalog:
        return [p for user in catalog.list_users() for p in catalog.partials_of(user.id)]


def partial_files(data: Path) -> list[str]:
    folder = data / "partial"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def parked(data: Path, at_least: int = 1) -> PartialUpload:
    """The one partial upload, once it is parked with ``at_least`` durable chunks."""

    def found() -> PartialUpload | None:
        with open_catalog(data) as catalog:
            rows = [p for u in catalog.list_users() for p in catalog.partials_of(u.id)]
        return rows[0] if len(rows) == 1 and rows[0].durable_chunks >= at_least else None

    result: PartialUpload = wait_until(found, timeout=10)
    return result


def wait_unheld(server: RunningServer) -> None:
    """Until no connection holds an upload (the dropped one was noticed)."""
    wait_until(lambda: server.server.service.upload_memory.used == 0, timeout=10)


def assert_one_intact_copy(server: RunningServer, session: ClientSession, image: Path) -> str:
    rows = catalog_images(server.data)
    assert len(rows) == 1, rows
    out = server.data.parent / f"out-{rows[0]['id']}"
    session.download(rows[0]["id"], out)
    assert out.read_bytes() == image.read_bytes()
    assert partials(server.data) == [] and partial_files(server.data) == []
    return str(rows[0]["id"])


def test_a_dropped_connection_resumes_from_the_last_durable_chunk(
    make_server: Factory, tmp_path: Path
) -> None:
    server = make_server(upload_sync_bytes=SYNC)
    image = big_image(tmp_path)
    store = ResumeStore(tmp_path / "resume", min_size=0)
    first = server.login()
    upload = first.begin_resumable_upload(image, store)
    assert upload.next_chunk == 0 and upload.chunk_count == 12
    (record,) = store.records()
    assert record.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "resume").stat().st_mode & 0o777 == 0o700
    upload.send_chunks(7)
    wait_until(lambda: partials(server.data) and partials(server.data)[0].durable_chunks >= 6)
    first._sock.close()  # the network goes: no goodbye
    upload.close()
    wait_unheld(server)
    kept = parked(server.data)
    assert partial_files(server.data) == [kept.image_id]

    second = server.login()
    again = second.begin_resumable_upload(image, store)
    assert again.next_chunk == kept.durable_chunks >= 6  # the last durable chunk, no earlier
    result = again.finish()
    assert result.receipt.body.upload_id == upload.header.upload_id  # the same upload
    assert result.id == kept.image_id
    assert assert_one_intact_copy(server, second, image) == result.id
    assert list(store.records()) == []  # the record (and its key) went with the upload


def test_an_upload_that_finished_while_its_client_was_gone_is_not_stored_twice(
    make_server: Factory, tmp_path: Path
) -> None:
    """The receipt never arrived: sending again gets a receipt for the stored image."""
    server = make_server(upload_sync_bytes=SYNC)
    image = big_image(tmp_path)
    store = ResumeStore(tmp_path / "resume", min_size=0)
    first = server.login()
    upload = first.begin_resumable_upload(image, store)
    upload.send_chunks()
    mac = upload._sealer.finish()
    first._request(ev.UploadEnd(mac))
    first._sock.close()  # gone before the receipt
    wait_until(lambda: len(catalog_images(server.data)) == 1, timeout=10)

    second = server.login()
    again = second.begin_resumable_upload(image, store)
    assert again.next_chunk == again.chunk_count  # nothing to send
    result = again.finish()
    assert result.hmac == mac.hex() and result.receipt.body.upload_id == upload.header.upload_id
    assert_one_intact_copy(server, second, image)


def test_a_changed_file_starts_afresh_with_a_new_key(make_server: Factory, tmp_path: Path) -> None:
    server = make_server(upload_sync_bytes=SYNC)
    image = big_image(tmp_path)
    store = ResumeStore(tmp_path / "resume", min_size=0)
    first = server.login()
    upload = first.begin_resumable_upload(image, store)
    (record_file,) = store.records()
    old = json.loads(record_file.read_bytes())
    upload.send_chunks(6)
    first._sock.close()
    upload.close()
    wait_unheld(server)
    parked(server.data, at_least=5)

    # The same size, even the same modification time: only the bytes differ.
    info = image.stat()
    changed = big_image(tmp_path, "other.bmp", seed=4).read_bytes()
    assert len(changed) == info.st_size
    image.write_bytes(changed)
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))

    second = server.login()
    fresh = second.begin_resumable_upload(image, store)
    assert fresh.next_chunk == 0
    (record_file,) = store.records()
    new = json.loads(record_file.read_bytes())
    assert new["content_key"] != old["content_key"]
    new_header = UploadHeader.parse(bytes.fromhex(new["header"]))
    assert new_header.upload_id != upload.header.upload_id
    assert new_header.nonce_prefix != upload.header.nonce_prefix
    result = fresh.finish()
    assert result.receipt.body.upload_id == new_header.upload_id  # the server got a new one
    rows = catalog_images(server.data)
    assert len(rows) == 1
    out = tmp_path / "stored.bmp"
    second.download(result.id, out)
    assert out.read_bytes() == changed  # the image stored is the new file
    # The old upload is still parked (its key never sealed the new bytes) until it
    # expires or makes room for another.
    assert [p.upload_id for p in partials(server.data)] == [upload.header.upload_id]


def test_a_file_that_changes_during_the_upload_is_refused_before_its_end(
    make_server: Factory, tmp_path: Path
) -> None:
    """The chunks are hashed and recorded as they are read to be sent, a batch ahead;
    a change after that (here: to chunk 5, read with the first batch) is caught by
    the file's modification time before the last chunk, so before UPLOAD_END: nothing
    is stored. The record holds the digests of the bytes that were sent, so the next
    attempt sees the change and begins afresh, with a new key."""
    server = make_server(upload_sync_bytes=SYNC)
    image = big_image(tmp_path)
    store = ResumeStore(tmp_path / "resume", min_size=0)
    session = server.login()
    upload = session.begin_resumable_upload(image, store)
    upload.send_chunks(2)
    first_key = json.loads(next(store.records()).read_bytes())["content_key"]
    with image.open("r+b") as handle:
        handle.seek(5 * 256 * 1024 + 10)
        handle.write(b"\x00" * 16)
    with upload, pytest.raises(Exception, match="changed while it was being sent"):
        upload.send_chunks()
    assert upload.next_chunk == upload.chunk_count - 1  # the last chunk never went
    session.close()

    again = server.login().begin_resumable_upload(image, store)
    assert again.next_chunk == 0  # the recorded digests no longer match: afresh
    assert json.loads(next(store.records()).read_bytes())["content_key"] != first_key
    result = again.finish()
    (row,) = catalog_images(server.data)  # one image: the file as it is now
    assert row["id"] == result.id
    out = tmp_path / "fetched"
    server.login().download(result.id, out)
    assert out.read_bytes() == image.read_bytes()
    # (The first upload stays parked until it expires or its place is needed:
    # protocol version 1 has no request to drop it.)


def test_resume_by_another_user_is_not_found(make_server: Factory, tmp_path: Path) -> None:
    server = make_server(users=("alice", "bob"), upload_sync_bytes=SYNC)
    image = big_image(tmp_path)
    store = ResumeStore(tmp_path / "resume", min_size=0)
    alice = server.login("alice")
    upload = alice.begin_resumable_upload(image, store)
    (record_file,) = store.records()
    record = json.loads(record_file.read_bytes())
    upload.send_chunks(5)
    alice._sock.close()
    upload.close()
    wait_unheld(server)
    kept = parked(server.data, at_least=4)

    header = UploadHeader.parse(bytes.fromhex(record["header"]))
    key = bytes.fromhex(record["content_key"])
    bob = server.login("bob")
    with pytest.raises(PeerError) as refused:
        bob.resume_upload(header, key)
    assert refused.value.code == ErrorCode.NOT_FOUND
    assert "no such upload" in str(refused.value)
    alice = server.login("alice")
    with pytest.raises(PeerError) as wrong_key:  # alice herself, with another key
        alice.resume_upload(header, bytes(32))
    assert wrong_key.value.code == ErrorCode.NOT_FOUND
    again = alice.begin_resumable_upload(image, store)  # untouched by both tries
    assert again.next_chunk == kept.durable_chunks
    again.finish()
    assert_one_intact_copy(server, alice, image)


def test_an_expired_partial_upload_is_swept(make_server: Factory, tmp_path: Path) -> None:
    server = make_server(upload_sync_bytes=SYNC, resume_for=1.0)
    image = big_image(tmp_path)
    store = ResumeStore(tmp_path / "resume", min_size=0)
    session = server.login()
    upload = session.begin_resumable_upload(image, store)
    upload.send_chunks(4)
    session._sock.close()
    upload.close()
    wait_unheld(server)
    kept = parked(server.data, at_least=3)
    assert partial_files(server.data) == [kept.image_id]
    time.sleep(1.2)
    report = server.server.service.store.sweep()  # type: ignore[attr-defined]
    assert report.partials_removed == (kept.image_id,)
    assert partials(server.data) == [] and partial_files(server.data) == []
    with open_catalog(server.data) as catalog:
        assert catalog.uploads_in_flight(1) == 0  # its place and quota are free again
    again = server.login().begin_resumable_upload(image, store)
    assert again.next_chunk == 0  # gone: a new upload
    again.finish()


def test_a_new_upload_takes_the_place_of_a_parked_one(make_server: Factory, tmp_path: Path) -> None:
    server = make_server(upload_sync_bytes=SYNC, max_uploads_per_user=1)
    image = big_image(tmp_path)
    store = ResumeStore(tmp_path / "resume", min_size=0)
    session = server.login()
    with session.begin_resumable_upload(image, store) as upload:
        upload.send_chunks(4)
    session._sock.close()
    wait_unheld(server)
    kept = parked(server.data, at_least=3)
    other = noise_image(tmp_path / "small.png", "PNG", (64, 48), seed=9)
    server.login().upload(other)  # the user's one place was the parked upload's
    assert partials(server.data) == [] and partial_files(server.data) == []
    assert kept.image_id not in {row["id"] for row in catalog_images(server.data)}


# --- a killed client process ------------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from imgshare import pki, tls
    from imgshare.client import ClientSession, ca_verifier
    from imgshare.client.resume import ResumeStore

    port, ca, image, records, stop_after = sys.argv[1:]
    ca = Path(ca)
    session = ClientSession.connect(
        "127.0.0.1", int(port), tls.create_client_context(ca),
        verifier=ca_verifier([pki.load_certificate(ca)], "127.0.0.1"),
    )
    session.login("alice", os.environ["PASSWORD"])
    upload = session.begin_resumable_upload(Path(image), ResumeStore(Path(records), min_size=0))
    print(json.dumps({"next_chunk": upload.next_chunk}), flush=True)
    if int(stop_after) >= 0:
        upload.send_chunks(int(stop_after))
        print("stopped", flush=True)
        time.sleep(60)  # killed here
    result = upload.finish()
    print(json.dumps({"id": result.id, "upload_id": result.receipt.body.upload_id.hex()}))
    """
)


def run_client(
    server: RunningServer, image: Path, records: Path, stop_after: int
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLIENT,
            str(server.port),
            str(server.ca),
            str(image),
            str(records),
            str(stop_after),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PASSWORD": PASSWORD},
    )


def test_a_killed_client_process_resumes_when_run_again(
    make_server: Factory, tmp_path: Path
) -> None:
    server = make_server(upload_sync_bytes=SYNC)
    image = big_image(tmp_path)
    records = tmp_path / "resume"
    first = run_client(server, image, records, stop_after=8)
    assert first.stdout is not None
    assert json.loads(first.stdout.readline()) == {"next_chunk": 0}
    assert first.stdout.readline().strip() == "stopped"
    wait_until(lambda: partials(server.data) and partials(server.data)[0].durable_chunks >= 7)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    first.stdout.close()
    wait_unheld(server)
    kept = parked(server.data, at_least=7)

    second = run_client(server, image, records, stop_after=-1)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0] == {"next_chunk": kept.durable_chunks}
    assert lines[1]["id"] == kept.image_id
    assert_one_intact_copy(server, server.login(), image)
    assert list(ResumeStore(records).records()) == []


# --- across worker processes --------------------------------------------------------------

LOGIN_LINE = re.compile(r"login  peer=127\.0\.0\.1:(\d+) user=\S+ .*?worker=(\d+)")


def test_an_upload_resumes_on_another_worker_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_users(data, ["alice"])
    image = big_image(tmp_path)
    env = {"IMGSHARE_UPLOAD_SYNC_BYTES": str(SYNC)}
    with ServeProcess(
        "--data", data, "--port", "0", "--workers", "2", cwd=tmp_path, env=env
    ) as serve:
        port = int(serve.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        ca = data / "certs" / "ca.pem"
        context = tls.create_client_context(ca)
        verifier = ca_verifier([pki.load_certificate(ca)], "127.0.0.1")
        opened: list[ClientSession] = []

        def worker_of(session: ClientSession) -> int:
            local = session._sock.getsockname()[1]

            def found() -> tuple[int] | None:
                for line in list(serve.lines):
                    match = LOGIN_LINE.search(line)
                    if match and int(match.group(1)) == local:
                        return (int(match.group(2)),)
                return None

            result: tuple[int] = wait_until(found, timeout=5)
            return result[0]

        def session_on(worker: int | None) -> tuple[ClientSession, int]:
            for _ in range(40):
                session = ClientSession.connect("127.0.0.1", port, context, verifier=verifier)
                opened.append(session)
                session.login("alice", PASSWORD)
                where = worker_of(session)
                if worker is None or where != worker:
                    return session, where
                session.close()
            raise AssertionError("the kernel never gave a connection to the other worker")

        try:
            store = ResumeStore(tmp_path / "resume", min_size=0)
            first, first_worker = session_on(None)
            upload = first.begin_resumable_upload(image, store)
            upload.send_chunks(6)
            wait_until(lambda: partials(data) and partials(data)[0].durable_chunks >= 5)
            first._sock.close()
            upload.close()
            # Once parked, its durable count is final (until then another chunk
            # sent before the cut may still become durable).
            serve.wait_for("upload kept for a resume")
            kept = parked(data, at_least=5)
            second, second_worker = session_on(first_worker)
            assert second_worker != first_worker
            again = second.begin_resumable_upload(image, store)
            assert again.next_chunk == kept.durable_chunks
            result = again.finish()
            assert result.id == kept.image_id
            out = tmp_path / "out.bmp"
            second.download(result.id, out)
            assert out.read_bytes() == image.read_bytes()
            assert len(catalog_images(data)) == 1
            assert partials(data) == [] and partial_files(data) == []
        finally:
            for session in opened:
                session.close()


def test_a_held_upload_answers_try_later_until_its_connection_ends(
    make_server: Factory, tmp_path: Path
) -> None:
    """A resume while the first connection still holds the upload waits for it."""
    server = make_server(upload_sync_bytes=SYNC)
    image = big_image(tmp_path)
    raw: RawClient = server.raw()
    raw.login("alice")
    upload = raw.prepare_upload(image.read_bytes(), "big.bmp", chunk_size=64 * 1024)
    assert isinstance(raw.begin_upload(upload), ev.UploadReady)
    for index in range(10):
        raw.send_chunk(upload, index)
    wait_until(lambda: partials(server.data) and partials(server.data)[0].durable_chunks >= 9)
    other = server.login()
    other.retry_for = 0.5
    with pytest.raises(PeerError) as held:
        other.resume_upload(upload.header, upload.content_key)
    assert held.value.code == ErrorCode.TRY_LATER
    raw.vanish()
    wait_unheld(server)
    parked(server.data, at_least=9)
    assert other.resume_upload(upload.header, upload.content_key) >= 9


def test_records_live_in_the_users_state_folder(tmp_path: Path) -> None:
    """``ResumeStore.default()``: $IMGSHARE_RESUME_DIR, else $XDG_STATE_HOME (an
    absolute one) /imgshare/resume, else ~/.local/state/imgshare/resume."""
    from imgshare.client.resume import default_folder

    state = tmp_path / "state"
    assert default_folder({"IMGSHARE_RESUME_DIR": str(tmp_path / "r")}) == tmp_path / "r"
    assert default_folder({"XDG_STATE_HOME": str(state)}) == state / "imgshare" / "resume"
    home = Path.home() / ".local" / "state" / "imgshare" / "resume"
    assert default_folder({"XDG_STATE_HOME": "relative/state"}) == home
    assert default_folder({}) == home
    assert ResumeStore.default({"XDG_STATE_HOME": str(state)}).folder == default_folder(
        {"XDG_STATE_HOME": str(state)}
    )


def test_sweep_removes_old_records_and_temp_files_a_killed_writer_left(tmp_path: Path) -> None:
    """``Client.send`` sweeps first: records nobody went back to (they hold keys) go
    after 24 h, a half-written one (a process killed while writing it) after a minute."""
    store = ResumeStore(tmp_path / "resume")
    store.folder.mkdir()
    files = {
        name: store.folder / name
        for name in ("old.json", "new.json", "1-dead.part", "2-writing.part")
    }
    for path in files.values():
        path.write_text("{}")
    day_ago = time.time() - 25 * 3600
    os.utime(files["old.json"], (day_ago, day_ago))
    os.utime(files["1-dead.part"], (time.time() - 120, time.time() - 120))
    assert store.sweep() == 1
    assert sorted(p.name for p in store.folder.iterdir()) == ["2-writing.part", "new.json"]


def test_no_chunk_is_sent_before_its_digest_is_recorded(
    make_server: Factory, tmp_path: Path
) -> None:
    """One pass over the file: the digests on disk cover every chunk sent so far (a
    batch ahead), and are those of the file's bytes."""
    server = make_server(upload_sync_bytes=SYNC)
    image = big_image(tmp_path)
    store = ResumeStore(tmp_path / "resume", min_size=0)
    upload = server.login().begin_resumable_upload(image, store)
    (record_file,) = store.records()
    assert json.loads(record_file.read_bytes())["chunk_sha256"] == []  # nothing sent yet
    data = image.read_bytes()
    size = upload.header.chunk_size
    for sent in (1, 5, upload.chunk_count):
        upload.send_chunks(sent - upload.next_chunk)
        recorded = json.loads(record_file.read_bytes())["chunk_sha256"]
        assert len(recorded) >= sent
        assert recorded == [
            hashlib.sha256(data[i * size : (i + 1) * size]).hexdigest()
            for i in range(len(recorded))
        ]
    upload.finish()
    assert list(store.records()) == []  # stored: the record goes
