"""Faults at every write step: a full disk or a failing fsync never costs an image.

The server runs as its own process with ``tests/faults/inject.c`` preloaded: while a
trigger file exists, writes to the chosen files fail with ENOSPC (or their fsync with
EIO), exactly as a full disk or a failing device would make the kernel answer. For
each step of an upload (the sealed object, the inbox copy, the catalog) the test
stores two images, arms the fault, tries a third, disarms it and checks that:

* the client got a clear STORAGE_FAILED answer and its session still works;
* nothing of the failed upload remains: no temp file, no object, no inbox file, no
  catalog row (finding 4: the plaintext copy used to stay behind);
* both acknowledged images download byte-identical;
* after a restart the start-up sweep finds nothing to clean and SQLite's
  ``PRAGMA integrity_check`` says ``ok``.
"""

from __future__ import annotations

import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
from helpers import (
    PASSWORD,
    RawClient,
    ServeProcess,
    add_users,
    noise_image,
    stored_files,
)

from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode

INJECT_C = Path(__file__).resolve().parent.parent / "faults" / "inject.c"


@pytest.fixture(scope="session")
def injector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fault injector, compiled for this machine."""
    library = tmp_path_factory.mktemp("faults") / "inject.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(INJECT_C), "-ldl"],
        check=True,
        capture_output=True,
    )
    return library


def _session(data: Path, port: int) -> ClientSession:
    ca = data / "certs" / "ca.pem"
    session = ClientSession.connect(
        "127.0.0.1",
        port,
        tls.create_client_context(ca),
        verifier=ca_verifier([pki.load_certificate(ca)], "127.0.0.1"),
    )
    session.login("alice", PASSWORD)
    return session


def _serve(data: Path, tmp_path: Path, env: dict[str, str] | None = None) -> ServeProcess:
    return ServeProcess("--data", data, "--port", "0", cwd=tmp_path, env=env)


def _port(serve: ServeProcess) -> int:
    return int(serve.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))


STEPS = {
    # step: (the files the fault hits, relative to DATA; the operation that fails;
    # whether the fault is armed before UPLOAD_BEGIN, else once UPLOAD_READY came)
    "catalog write at the reservation": ("catalog.sqlite3", "write", True),
    "sealed object write": ("tmp/", "write", False),
    "sealed object fsync": ("tmp/", "fsync", False),
    "inbox copy write": ("inbox/.tmp/", "write", False),
    "inbox copy fsync": ("inbox/.tmp/", "fsync", False),
    "catalog write at the row": ("catalog.sqlite3", "write", False),
    "catalog fsync at the row": ("catalog.sqlite3", "fsync", False),
}


def _upload_under_fault(
    data: Path, port: int, image: Path, armed: Path, *, before_begin: bool
) -> ev.Event:
    """Upload ``image`` with the fault armed from the moment ``before_begin`` says;
    return the server's answer to the request the fault hit."""
    ca = data / "certs" / "ca.pem"
    context = tls.create_client_context(ca)
    verifier = ca_verifier([pki.load_certificate(ca)], "127.0.0.1")
    with RawClient.connect(("127.0.0.1", port), context, verifier) as raw:
        raw.login("alice")
        upload = raw.prepare_upload(image.read_bytes(), name=image.name)
        if before_begin:
            armed.touch()
            return raw.begin_upload(upload)
        assert isinstance(raw.begin_upload(upload), ev.UploadReady)
        armed.touch()
        for index in range(upload.header.chunk_count):
            raw.send_chunk(upload, index)
        raw.send(ev.UploadEnd(upload.hmac))
        return raw.receive()


@pytest.mark.parametrize("step", list(STEPS))
def test_a_fault_at_each_write_step_loses_nothing_and_leaves_nothing(
    step: str, injector: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    add_users(data, ["alice"])
    armed = tmp_path / "armed"
    where, operation, before_begin = STEPS[step]
    env = {
        "LD_PRELOAD": str(injector),
        "FAULT_ARMED": str(armed),
        "FAULT_PATH": f"{data}/{where}",
        "FAULT_OP": operation,
    }
    images = [noise_image(tmp_path / f"{i}.png", "PNG", (300, 200), seed=i) for i in range(4)]
    originals = [path.read_bytes() for path in images]
    with _serve(data, tmp_path, env) as serve:
        port = _port(serve)
        session = _session(data, port)
        kept = [session.upload(images[0]).id, session.upload(images[1]).id]
        before = stored_files(data)
        answer = _upload_under_fault(data, port, images[2], armed, before_begin=before_begin)
        armed.unlink()
        assert isinstance(answer, ev.Error) and not answer.fatal, answer
        assert answer.code == ErrorCode.STORAGE_FAILED
        assert "cannot store" in answer.message or "could not store" in answer.message
        assert stored_files(data) == before  # nothing of the failed upload remains
        for image_id, original in zip(kept, originals[:2], strict=True):
            out = tmp_path / f"{image_id}.out"
            session.download(image_id, out)
            assert out.read_bytes() == original
        kept.append(session.upload(images[3]).id)  # the same session works on
        session.close()
        assert serve.terminate()[0] == 0
    with closing(sqlite3.connect(data / "catalog.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = sorted(row[0] for row in db.execute("SELECT id FROM images"))
    assert rows == sorted(kept)
    with _serve(data, tmp_path) as again:
        _port(again)
        assert not any("sweep" in line for line in again.lines)  # nothing to clean
        session = _session(data, _port(again))
        assert sorted(entry.image_id.hex() for entry in session.list_images()) == sorted(kept)
        session.close()
        again.terminate()
