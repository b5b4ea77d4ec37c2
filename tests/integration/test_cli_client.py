"""The real ``imgshare`` console script, in subprocesses (issue 4, "Done when").

Client commands (``user``, ``send``, ``get``, ``list``) run against the in-process
server of ``conftest.make_server``; ``imgshare serve`` itself runs as a child process
on an empty data folder and is stopped with SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    PASSWORD,
    RunningServer,
    ServeProcess,
    catalog_images,
    imgshare,
    inbox_files,
    noise_image,
    server_hmacs,
)

from imgshare import pki, tls
from imgshare.client import ClientSession, ca_verifier
from imgshare.server import open_catalog

HEX64 = re.compile(r"[0-9a-f]{64}")


def _password_file(tmp_path: Path, password: str = PASSWORD) -> Path:
    path = tmp_path / "password.txt"
    path.write_text(password + "\n")
    return path


def _connection(server: RunningServer, password_file: Path, user: str = "alice") -> list[str]:
    return [
        "--server",
        f"localhost:{server.port}",
        "--ca",
        str(server.ca),
        "--user",
        user,
        "--password-file",
        str(password_file),
    ]


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


# --- user -------------------------------------------------------------------------------


def test_user_add_list_remove_while_serving(server: RunningServer, tmp_path: Path) -> None:
    password_file = _password_file(tmp_path, "carol's own password")
    added = _ok(
        imgshare(
            "user",
            "add",
            "carol",
            "--data",
            server.data,
            "--password-file",
            password_file,
            cwd=tmp_path,
        )
    )
    assert added.stdout.strip() == "user carol added"
    listed = _ok(imgshare("user", "list", "--data", server.data, cwd=tmp_path))
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["alice", "carol"]
    # carol logs in to the running server with the password from the file
    image = noise_image(tmp_path / "carol.png", "PNG")
    _ok(imgshare("send", image, *_connection(server, password_file, "carol"), cwd=tmp_path))
    assert len(inbox_files(server.data, "carol")) == 1
    # she owns an image: removing her needs --purge, which deletes it too
    refused = imgshare("user", "remove", "carol", "--data", server.data, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.startswith("imgshare: error: user 'carol' owns 1 image(s)")
    purged = _ok(
        imgshare("user", "remove", "carol", "--purge", "--data", server.data, cwd=tmp_path)
    )
    assert purged.stdout.strip() == "user carol removed with 1 image(s)"
    assert inbox_files(server.data, "carol") == []
    assert catalog_images(server.data) == []
    assert not list((server.data / "objects").rglob("*/*"))


def test_user_add_while_this_process_holds_two_catalogs(
    server: RunningServer, client: ClientSession, tmp_path: Path
) -> None:
    """``imgshare user add`` works while the server runs, even when the serving
    process has a second connection to the catalog (a reader pool, a probe)."""
    second = open_catalog(server.data)
    try:
        _ok(
            imgshare(
                "user",
                "add",
                "bob",
                "--data",
                server.data,
                "--password-file",
                _password_file(tmp_path),
                cwd=tmp_path,
            )
        )
        second.list_users()
        result = client.upload(noise_image(tmp_path / "after.png", "PNG"))
        server.login("bob")  # rehashes bob's password through the server's catalog
        assert [row["id"] for row in catalog_images(server.data)] == [result.id]
        assert [u.name for u in second.list_users()] == ["alice", "bob"]
    finally:
        second.close()


def test_user_add_refuses_a_short_password(server: RunningServer, tmp_path: Path) -> None:
    result = imgshare(
        "user",
        "add",
        "dave",
        "--data",
        server.data,
        "--password-file",
        _password_file(tmp_path, "short"),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("imgshare: error: a password is 8 to 1024 characters")
    assert len(result.stderr.strip().splitlines()) == 1


# --- send, get, list ---------------------------------------------------------------------


def test_send_prints_the_hmac_the_server_logged(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = [
        noise_image(tmp_path / "one.jpg", "JPEG", seed=1),
        noise_image(tmp_path / "two.webp", "WEBP", seed=2),
    ]
    result = _ok(
        imgshare("send", *images, *_connection(server, _password_file(tmp_path)), cwd=tmp_path)
    )
    client_hmacs = re.findall(
        r"^HMAC of image on client side: ([0-9a-f]{64})$", result.stdout, re.MULTILINE
    )
    assert len(client_hmacs) == 2
    assert client_hmacs == server_hmacs(caplog.records)
    stored = re.findall(
        r"^(\S+): stored as ([0-9a-f]{32}) \((\d+) bytes", result.stdout, re.MULTILINE
    )
    assert [(Path(p).name, int(size)) for p, _, size in stored] == [
        (p.name, p.stat().st_size) for p in images
    ]
    rows = catalog_images(server.data)
    assert [r["id"] for r in rows] == [image_id for _, image_id, _ in stored]
    assert [r["hmac"].hex() for r in rows] == client_hmacs


def test_send_json(server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = [
        noise_image(tmp_path / "a.png", "PNG", seed=1),
        noise_image(tmp_path / "b.gif", "GIF", seed=2),
        noise_image(tmp_path / "c.tif", "TIFF", seed=3),
    ]
    result = _ok(
        imgshare(
            "send", "--json", *images, *_connection(server, _password_file(tmp_path)), cwd=tmp_path
        )
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    for record, path in zip(records, images, strict=True):
        assert {"id", "name", "size", "sha256", "hmac"} <= set(record)
        assert record["name"] == path.name
        assert record["size"] == path.stat().st_size
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert HEX64.fullmatch(record["hmac"])
    assert [r["hmac"] for r in records] == server_hmacs(caplog.records)
    assert [r["id"] for r in records] == [row["id"] for row in catalog_images(server.data)]


def test_get_round_trip(server: RunningServer, client: ClientSession, tmp_path: Path) -> None:
    path = noise_image(tmp_path / "original.bmp", "BMP", (50, 40))
    uploaded = client.upload(path, sha256=True)
    connection = _connection(server, _password_file(tmp_path))
    out = tmp_path / "fetched.bmp"
    result = _ok(imgshare("get", uploaded.id, "-o", out, *connection, cwd=tmp_path))
    assert out.read_bytes() == path.read_bytes()
    assert f"HMAC of image on client side: {uploaded.hmac}" in result.stdout.splitlines()
    # an existing output file is kept unless --force
    again = imgshare("get", uploaded.id, "-o", out, *connection, cwd=tmp_path)
    assert again.returncode == 1
    assert "exists" in again.stderr
    forced = _ok(
        imgshare("get", uploaded.id, "-o", out, "--force", "--json", *connection, cwd=tmp_path)
    )
    record = json.loads(forced.stdout)
    assert (record["id"], record["hmac"], record["sha256"]) == (
        uploaded.id,
        uploaded.hmac,
        uploaded.sha256,
    )
    # without -o the file gets the name it was sent with, in the current folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _ok(imgshare("get", uploaded.id, *connection, cwd=elsewhere))
    assert (elsewhere / "original.bmp").read_bytes() == path.read_bytes()


def test_list_json(server: RunningServer, client: ClientSession, tmp_path: Path) -> None:
    first = client.upload(noise_image(tmp_path / "x.png", "PNG", seed=1))
    second = client.upload(noise_image(tmp_path / "y.jpg", "JPEG", seed=2))
    result = _ok(
        imgshare("list", "--json", *_connection(server, _password_file(tmp_path)), cwd=tmp_path)
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["name"], r["size"], r["owner"], r["hmac"]) for r in records] == [
        (first.id, "x.png", first.size, "alice", first.hmac),
        (second.id, "y.jpg", second.size, "alice", second.hmac),
    ]
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["created"]) for r in records
    )
    text = _ok(imgshare("list", *_connection(server, _password_file(tmp_path)), cwd=tmp_path))
    assert [line.split()[0] for line in text.stdout.splitlines()] == [first.id, second.id]


def test_password_from_theenvironment(server: RunningServer, tmp_path: Path) -> None:
    result = _ok(
        imgshare(
            "list",
            "--server",
            f"localhost:{server.port}",
            "--ca",
            server.ca,
            cwd=tmp_path,
            env={"IMGSHARE_USER": "alice", "IMGSHARE_PASSWORD": PASSWORD},
        )
    )
    assert result.stdout == ""


def test_a_non_image_among_several_files(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good_one = noise_image(tmp_path / "good1.png", "PNG", seed=1)
    text = tmp_path / "notes.txt"
    text.write_text("definitely not a picture\n")
    good_two = noise_image(tmp_path / "good2.jpg", "JPEG", seed=2)
    result = imgshare(
        "send",
        good_one,
        text,
        good_two,
        *_connection(server, _password_file(tmp_path)),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stdout.count("stored as") == 2
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"imgshare: error: {text}: server: not an image")
    assert errors[-1] == "imgshare: error: 1 of 3 image(s) not sent"
    assert [row["name"] for row in catalog_images(server.data)] == ["good1.png", "good2.jpg"]


def test_wrong_password_is_one_line_and_exit_1(server: RunningServer, tmp_path: Path) -> None:
    image = noise_image(tmp_path / "p.png", "PNG")
    wrong = _password_file(tmp_path, "not alice's password")
    result = imgshare("send", image, *_connection(server, wrong), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "imgshare: error: server: invalid username or password\n"
    assert catalog_images(server.data) == []


def test_an_untrusted_server_is_explained_and_exit_1(
    server: RunningServer, tmp_path: Path, pki_paths: pki.CertificatePaths
) -> None:
    """A CA that did not sign the server's certificate: TLS refuses, and the error says
    why in words, shows the certificate and how to trust it (test_cli_errors.py has
    every other case)."""
    connection = _connection(server, _password_file(tmp_path))
    connection[connection.index("--ca") + 1] = str(pki_paths.ca_cert)
    result = imgshare("list", *connection, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    first, *details = result.stderr.splitlines()
    assert first == (
        f"imgshare: error: cannot trust localhost:{server.port}: its certificate is signed "
        "by a CA you do not trust"
    )
    assert any(line.strip().startswith("SHA-256 ") for line in details)
    assert "CERTIFICATE_VERIFY_FAILED" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["user"],
        ["user", "add"],
        ["user", "list"],
        ["user", "remove"],
        ["send"],
        ["get"],
        ["list"],
        ["certs"],
        ["register"],
        ["login"],
        ["logout"],
        ["passwd"],
        ["token"],
        ["token", "create"],
        ["token", "list"],
        ["token", "revoke"],
        ["share"],
        ["unshare"],
        ["shares"],
        ["delete"],
    ],
    ids=lambda c: " ".join(c) or "imgshare",
)
def test_help_of_each_command(command: list[str], tmp_path: Path) -> None:
    result = _ok(imgshare(*command, "--help", cwd=tmp_path))
    assert result.stdout.startswith("Usage: imgshare")
    assert result.stderr == ""


# --- imgshare serve ------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_serve_first_start_creates_the_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServeProcess("--data", data, "--port", "0", cwd=tmp_path) as serve:
        port = int(serve.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        assert port > 0
        certs = data / "certs"
        for path in (certs / "ca.pem", certs / "server.pem", data / "catalog.sqlite3"):
            assert path.is_file(), path
        for secret in (certs / "server.key", certs / "ca.key", data / "storage.key"):
            assert _mode(secret) == 0o600, secret
        assert _mode(data / "catalog.sqlite3") == 0o600
        assert _mode(data) == 0o700
        # it logs where everything is
        log = "\n".join(serve.lines)
        assert f"ca={certs / 'ca.pem'}" in log
        assert f"cert={certs / 'server.pem'}" in log
        assert f"path={data / 'storage.key'}" in log
        assert f"data={data}" in log
        # it serves: a client that trusts the new CA completes both handshakes
        with ClientSession.connect(
            "127.0.0.1",
            port,
            tls.create_client_context(certs / "ca.pem"),
            verifier=ca_verifier([pki.load_certificate(certs / "ca.pem")], "127.0.0.1"),
        ):
            pass
        status, took = serve.terminate()
    assert status == 0
    assert took < 5.0
    assert any("stopped" in line for line in serve.lines)
    ca_before = (certs / "ca.pem").read_bytes()
    key_before = (data / "storage.key").read_bytes()
    # a second start reuses what the first one made
    with ServeProcess("--data", data, "--port", "0", cwd=tmp_path) as again:
        again.wait_for(r"listening on")
        assert any("storage key loaded" in line for line in again.lines)
        assert again.terminate()[0] == 0
    assert (certs / "ca.pem").read_bytes() == ca_before
    assert (data / "storage.key").read_bytes() == key_before


def _json_lines(lines: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    parsed, other = [], []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            other.append(line)
    return parsed, other


def test_serve_json_logs(tmp_path: Path) -> None:
    with ServeProcess(
        "--data", tmp_path / "data", "--port", "0", "--log-format", "json", cwd=tmp_path
    ) as serve:
        serve.wait_for(r'"message": "listening on 127\.0\.0\.1:\d+"')
        status, _ = serve.terminate()
    assert status == 0
    records, other = _json_lines(serve.lines)
    assert all(isinstance(r, dict) for r in records)
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
        assert record["logger"].startswith("imgshare")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    by_message = {r["message"]: r for r in records}
    assert by_message["storage key created"]["path"] == str(tmp_path / "data" / "storage.key")
    assert "stopped" in by_message
    listening = next(r for r in records if r["message"].startswith("listening on"))
    assert listening["inbox"] is True
    assert other == [], "every stderr line is a JSON log record"


def test_serve_json_logs_are_all_json(tmp_path: Path) -> None:
    with ServeProcess(
        "--data", tmp_path / "data", "--port", "0", "--log-format", "json", cwd=tmp_path
    ) as serve:
        serve.wait_for(r"listening on")
        serve.terminate()
    assert _json_lines(serve.lines)[1] == []


def test_serve_settings_from_the_environment_and_flags(tmp_path: Path) -> None:
    """IMGSHARE_* variables reach ``serve``; a flag beats the variable."""
    data = tmp_path / "env-data"
    env = {"IMGSHARE_DATA": str(data), "IMGSHARE_PORT": "1", "IMGSHARE_INBOX": "false"}
    with ServeProcess("--port", "0", cwd=tmp_path, env=env) as serve:
        match = serve.wait_for(r"listening on 127\.0\.0\.1:(\d+)  data=(\S+) inbox=(\w+)")
        assert match.group(1) != "1"
        assert (match.group(2), match.group(3)) == (str(data), "False")
        assert serve.terminate()[0] == 0
    assert (data / "storage.key").is_file()
