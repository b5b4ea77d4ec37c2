"""``imgshare.Client`` as a program uses it (issue 12, item 3): the examples of
docs/client.md run as written against a real server, and the step-by-step upload
that tests and programs drive themselves, through public names only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PASSWORD, RunningServer, noise_image

import imgshare
from imgshare.errors import ImgshareError, PeerError
from imgshare.protocol.constants import ErrorCode

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
    assert re.search(r"^done beach\.png", out, re.MULTILINE)
    assert re.search(r"^done dunes\.jpg", out, re.MULTILINE)
    assert "notes.txt" not in out.replace("skipped notes.txt", "")  # skipped, never sent
    assert re.search(r"^stored as [0-9a-f]{32} owner alice$", out, re.MULTILINE)
    assert "['bob']" in out  # the share the example made
    assert re.search(r"downloads/\S+ \d+ bytes, HMAC [0-9a-f]{64}", out)
    assert "no such image:" in out
    # The example deleted the newest image: two sends by send(), one step by step.
    assert re.search(r"^2 images left$", out, re.MULTILINE)


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
