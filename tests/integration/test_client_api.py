"""``imgshare.Client`` as a program uses it (issue 12, item 3): the examples of
docs/client.md run as written against a real server, and the step-by-step upload
that tests and programs drive themselves, through public names only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import PASSWORD, RunningServer, noise_bytes, noise_image, wait_until
from PIL import Image

import imgshare
from imgshare import pki
from imgshare.client.metadata import strip_metadata
from imgshare.client.resume import ResumeStore
from imgshare.errors import ImgshareError, PeerError, SetupError
from imgshare.protocol.constants import ErrorCode
from imgshare.store import open_catalog

DOCS = Path(__file__).parents[2] / "docs" / "client.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[str]:
    return PYTHON_BLOCK.findall(DOCS.read_text(encoding="utf-8"))


@pytest.fixture
def home(server: RunningServer, tmp_path: Path) -> Path:
    """A folder as the docs assume it: ``photos/`` with images (and a note that is
    not one), ``data/certs/ca.pem``, a saved login of alice, and bob."""
    server.add_user("bob")
    home = tmp_path / "home"
    photos = home / "photos"
    photos.mkdir(parents=True)
    noise_image(photos / "beach.png", "PNG", size=(200, 150), seed=1)
    noise_image(photos / "dunes.jpg", "JPEG", size=(240, 160), seed=2)
    (photos / "notes.txt").write_text("not an image\n")
    (home / "data" / "certs").mkdir(parents=True)
    (home / "data" / "certs" / "ca.pem").write_bytes(Path(server.ca).read_bytes())
    (home / "password").write_text(PASSWORD + "\n")
    login = subprocess.run(
        [sys.executable, "-m", "imgshare", "login", "--server", f"localhost:{server.port}",
         "--ca", str(server.ca), "--user", "alice", "--password-file", "password"],
        cwd=home, env=_env(home), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    return home


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "IMGSHARE_CONFIG": str(home / "profile.json"),
        "XDG_STATE_HOME": str(home / "state"),  # resume records: the test's own
        "IMGSHARE_PASSWORD": PASSWORD,
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def test_the_examples_in_docs_client_md(server: RunningServer, home: Path) -> None:
    """Every ``python`` block of docs/client.md, in order, as one program (later
    blocks use the names earlier ones import), run in a process of its own. Only the
    server's port differs from the docs' 8443."""
    blocks = examples()
    assert len(blocks) >= 5, "docs/client.md lost its examples"
    program = "\n\n".join(blocks).replace("localhost:8443", f"localhost:{server.port}")
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=home,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "logged in as alice" in out
    assert re.search(r"^done beach\.png", out, re.MULTILINE), out
    assert re.search(r"^done dunes\.jpg", out, re.MULTILINE), out
    assert "notes.txt" not in out.replace("skipped notes.txt", "")  # skipped, never sent
    assert re.search(r"^stored as [0-9a-f]{32} owner alice$", out, re.MULTILINE)
    assert "['bob']" in out  # the share the example made
    assert re.search(r"downloads/\S+ \d+ bytes, HMAC [0-9a-f]{64}", out)
    assert "no such image:" in out
    # A small photo has no resume record: begin_upload(resume=True) starts at 0.
    assert re.search(r"^starting at byte 0 of \d+$", out, re.MULTILINE)
    assert re.search(r"^stored dunes\.jpg as [0-9a-f]{32}$", out, re.MULTILINE)
    # The example deleted the newest image: two sends by send(), one step by step, one
    # with resume=True.
    assert re.search(r"^3 images left$", out, re.MULTILINE)


def test_step_by_step_upload_through_public_names(server: RunningServer, tmp_path: Path) -> None:
    """begin_upload / send_chunks / finish, stopped halfway and abandoned: the server
    keeps nothing of the half, and the next upload on a new client is stored whole."""
    image = noise_image(tmp_path / "big.png", "PNG", size=(300, 300), seed=3)
    with imgshare.Client(f"localhost:{server.port}", ca=server.ca) as client:
        client.login("alice", PASSWORD)
        upload = client.begin_upload(image, chunk_size=4096)
        assert upload.chunk_count > 4
        upload.send_chunks(2)
        assert upload.next_chunk == 2 and 0 < upload.sent < upload.size
    with imgshare.Client(f"localhost:{server.port}", ca=server.ca) as client:
        client.login("alice", PASSWORD)
        assert client.list() == []  # the abandoned half is nowhere
        upload = client.begin_upload(image, chunk_size=4096)
        upload.send_chunks()
        result = upload.finish()
        assert result.receipt.body.username == "alice"
        fetched = client.get(result.id, tmp_path / "back.png")
        assert (tmp_path / "back.png").read_bytes() == image.read_bytes()
        assert fetched.hmac == result.hmac


def test_wrong_password_and_missing_image_are_typed_errors(
    server: RunningServer, tmp_path: Path
) -> None:
    with imgshare.Client(f"localhost:{server.port}", ca=server.ca) as client:
        with pytest.raises(PeerError) as refused:
            client.login("alice", "not the password")
        assert refused.value.code is ErrorCode.AUTH_FAILED
        assert "not the password" not in str(refused.value)
    with imgshare.Client(f"localhost:{server.port}", ca=server.ca) as client:
        client.login("alice", PASSWORD)
        with pytest.raises(PeerError) as missing:
            client.get("0" * 32, tmp_path / "nothing.png")
        assert missing.value.code is ErrorCode.NOT_FOUND
        assert not (tmp_path / "nothing.png").exists()
    with pytest.raises(ImgshareError):
        imgshare.Client(f"localhost:{server.port}", ca=server.ca, pin="00" * 32)


def test_a_cut_step_by_step_upload_is_resumed_by_send_with_progress_from_there(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Public names only: ``begin_upload(resume=True)`` cut after a few chunks (the
    client closed: a dropped connection), then ``Client.send`` of the same file goes
    on from the last durable chunk, and its first "sending" report starts there."""
    server = make_server(upload_sync_bytes=64 * 1024)
    image = noise_image(tmp_path / "big.bmp", "BMP", size=(1000, 1000), seed=4)  # 12 chunks
    store = ResumeStore(tmp_path / "resume", min_size=0)
    with imgshare.Client(f"localhost:{server.port}", ca=server.ca) as client:
        client.login("alice", PASSWORD)
        upload = client.begin_upload(image, resume=True, resume_store=store)
        assert (upload.next_chunk, upload.sent, upload.chunk_count) == (0, 0, 12)
        upload.send_chunks(7)
        wait_until(lambda: durable_chunks(server) >= 6)  # made durable by the server
    # closed mid-upload: the server parks the upload with its durable chunks

    reports: list[imgshare.Progress] = []
    with imgshare.Client(f"localhost:{server.port}", ca=server.ca) as client:
        client.login("alice", PASSWORD)
        (last,) = client.send([image], progress=reports.append, resume_store=store)
        assert last.state == "done" and last.result is not None
        sending = [r for r in reports if r.state == "sending"]
        first = sending[0]
        assert first.resumed > 0 and first.sent == first.resumed  # starts where it was
        assert first.resumed % (256 * 1024) == 0 and first.resumed < first.total
        assert all(r.resumed == first.resumed and r.resumable for r in sending)
        assert last.result.receipt.body.upload_id == upload.header.upload_id  # same upload
        (entry,) = client.list()
        assert entry.image_id.hex() == last.result.id
        client.get(last.result.id, tmp_path / "back.bmp")
    assert (tmp_path / "back.bmp").read_bytes() == image.read_bytes()
    assert list(store.records()) == []


def durable_chunks(server: RunningServer) -> int:
    with open_catalog(server.data) as catalog:
        rows = [p for user in catalog.list_users() for p in catalog.partials_of(user.id)]
    return rows[0].durable_chunks if rows else 0


def test_an_upload_with_metadata_stripped_resumes_too(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The record keeps the digests of the stripped bytes under the file's identity:
    stripping again gives the same bytes, so the upload goes on; what is stored is the
    stripped file."""
    server = make_server(upload_sync_bytes=64 * 1024)
    image = Image.frombytes("RGB", (1600, 1200), noise_bytes(1600 * 1200 * 3, seed=6))
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.5)
    photo = tmp_path / "trip.jpg"
    image.save(photo, "JPEG", quality=90, exif=exif)
    stripped = strip_metadata(photo.read_bytes(), "gps")
    assert stripped != photo.read_bytes() and len(stripped) > 6 * 256 * 1024
    store = ResumeStore(tmp_path / "resume", min_size=0)
    with imgshare.Client(f"localhost:{server.port}", ca=server.ca) as client:
        client.login("alice", PASSWORD)
        upload = client.begin_upload(photo, resume=True, resume_store=store, strip_metadata="gps")
        assert upload.size == len(stripped)
        upload.send_chunks(5)
        wait_until(lambda: durable_chunks(server) >= 4)
    with imgshare.Client(f"localhost:{server.port}", ca=server.ca) as client:
        client.login("alice", PASSWORD)
        again = client.begin_upload(photo, resume=True, resume_store=store, strip_metadata="gps")
        assert again.next_chunk >= 4 and again.sent == again.next_chunk * 256 * 1024
        result = again.finish()
        assert result.receipt.body.upload_id == upload.header.upload_id
        client.get(result.id, tmp_path / "back.jpg")
    assert (tmp_path / "back.jpg").read_bytes() == stripped


def test_a_setup_that_cannot_work_is_not_retried(server: RunningServer, tmp_path: Path) -> None:
    """A CA that did not sign the server's certificate: ``SetupError`` at once, not
    after three back-offs (at least 1.75 s) that would get the same answer."""
    other = pki.init_certificates(tmp_path / "other-ca")
    started = time.monotonic()
    with imgshare.Client(f"localhost:{server.port}", ca=other.ca_cert) as client:
        with pytest.raises(SetupError) as refused:
            client.login("alice", PASSWORD)
    assert time.monotonic() - started < 1.5
    assert PASSWORD not in str(refused.value)
