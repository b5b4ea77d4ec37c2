"""Errors a person can act on (issue 12): the real ``imgshare`` console script in
subprocesses, against real servers on 127.0.0.1 (ours, a plain HTTP server, a socket
that never answers), with real certificates from our own generator.

Each failure must name its cause and what to do: a CA that did not sign the server's
certificate (with that certificate's fingerprint), the system bundle, the server's own
certificate given as the CA, a host name the certificate lacks, an expired one, a port
that does not speak TLS or never answers, a server that wants a client certificate.
Then ``get`` (folders, standard output, unwritable outputs), id prefixes, the help
texts, and the README's "from any folder" steps.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import (
    IMGSHARE,
    PASSWORD,
    RunningServer,
    catalog_images,
    environment,
    imgshare,
    noise_image,
)

from imgshare import pki
from imgshare.client import ClientSession

REPO = Path(__file__).resolve().parents[2]
ERROR = "imgshare: error: "


def _password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password.txt"
    path.write_text(PASSWORD + "\n")
    return path


def _flags(server: str, ca: Path | str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--server", server, "--ca", str(ca), "--user", "alice",
        "--password-file", str(_password_file(tmp_path)), *extra,
    ]  # fmt: skip


def _fails(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run a command that must fail with exit 1; return its stderr lines (the first
    is ``imgshare: error: ...``), checking that nothing went to stdout."""
    result = imgshare(*args, cwd=cwd, env=env)
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith(ERROR), result.stderr
    assert "Traceback" not in result.stderr
    return lines


def _ok(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = imgshare(*args, cwd=cwd, env=env)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _text(lines: list[str]) -> str:
    """The lines as one text, as a person reads them (wrapping undone)."""
    return " ".join(line.strip() for line in lines)


def _fingerprint(path: Path) -> str:
    return pki.fingerprint_sha256(pki.load_certificate(path))


# --- certificates that do not verify -------------------------------------------------------


def test_a_wrong_ca_shows_the_servers_certificate_and_how_to_trust_it(
    server: RunningServer, tmp_path: Path, pki_paths: pki.CertificatePaths
) -> None:
    lines = _fails(
        "list", *_flags(f"localhost:{server.port}", pki_paths.ca_cert, tmp_path), cwd=tmp_path
    )
    assert lines[0] == (
        f"{ERROR}cannot trust localhost:{server.port}: its certificate is signed by a CA "
        "you do not trust"
    )
    text = "\n".join(lines)
    server_pem = server.data / "certs" / "server.pem"
    info = pki.describe_certificate(pki.load_certificate(server_pem))
    assert f"SHA-256  {_fingerprint(server_pem)}" in text
    assert f"subject  {info.subject}" in text
    assert f"issuer   {info.issuer}" in text
    assert "names    localhost, 127.0.0.1, ::1" in text
    assert f"valid    {info.not_before:%Y-%m-%d %H:%M} to " in text
    assert f"you trust (--ca {pki_paths.ca_cert}): " in text
    assert _fingerprint(pki_paths.ca_cert) in text
    assert "pass --ca ca.pem" in _text(lines)
    assert "DATA/certs/ca.pem on the server" in _text(lines)


def test_the_system_bundle_is_named_as_such(server: RunningServer, tmp_path: Path) -> None:
    bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    if not Path(bundle).is_file():
        pytest.skip("no system CA bundle on this machine")
    lines = _fails("list", *_flags(f"localhost:{server.port}", bundle, tmp_path), cwd=tmp_path)
    assert re.fullmatch(
        rf"{ERROR}cannot trust localhost:{server.port}: --ca {re.escape(bundle)} is a bundle of "
        r"\d+ public CAs \(the system's\?\), but an imgshare server's certificate comes from "
        r"its own private CA",
        lines[0],
    ), lines[0]
    assert _fingerprint(server.data / "certs" / "server.pem") in "\n".join(lines)


def test_server_pem_given_as_the_ca(server: RunningServer, tmp_path: Path) -> None:
    certs = server.data / "certs"
    lines = _fails(
        "list", *_flags(f"localhost:{server.port}", certs / "server.pem", tmp_path), cwd=tmp_path
    )
    assert lines[0] == (
        f"{ERROR}cannot trust localhost:{server.port}: --ca {certs / 'server.pem'} is the "
        "server's own certificate (server.pem), not the CA that signed it"
    )
    assert f"Pass {certs / 'ca.pem'} instead" in _text(lines)


def _server_with_cert(
    make_server: Callable[..., RunningServer], folder: Path, **issue: object
) -> RunningServer:
    paths = pki.init_certificates(folder)
    pki.create_server_certificate(folder, force=True, **issue)  # type: ignore[arg-type]
    return make_server(cert=paths.server_cert, key=paths.server_key, ca=paths.ca_cert)


def test_a_host_name_the_certificate_lacks(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = _server_with_cert(make_server, tmp_path / "certs", hosts=["imgs.example.org"])
    lines = _fails("list", *_flags(f"127.0.0.1:{server.port}", server.ca, tmp_path), cwd=tmp_path)
    assert lines[0] == (
        f"{ERROR}cannot trust 127.0.0.1:{server.port}: its certificate does not name "
        "127.0.0.1; it names imgs.example.org"
    )
    text = _text(lines)
    assert f"(--server imgs.example.org:{server.port})" in text
    assert "imgshare certs server --dir DATA/certs --host 127.0.0.1 --force" in text


def test_an_expired_certificate(make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    issued = datetime.now(UTC) - timedelta(days=30)
    server = _server_with_cert(make_server, tmp_path / "certs", now=issued, days=1)
    lines = _fails("list", *_flags(f"localhost:{server.port}", server.ca, tmp_path), cwd=tmp_path)
    ended = issued + timedelta(days=1)
    assert lines[0].startswith(
        f"{ERROR}cannot trust localhost:{server.port}: its certificate expired on {ended:%Y-%m-%d}"
    ), lines[0]
    assert "imgshare certs server --dir" in _text(lines)


# --- ports that are not an imgshare server -----------------------------------------------


@pytest.fixture
def http_port() -> Iterator[int]:
    """A plain HTTP server on 127.0.0.1."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_an_http_port_does_not_speak_tls(
    server: RunningServer, http_port: int, tmp_path: Path
) -> None:
    lines = _fails("list", *_flags(f"127.0.0.1:{http_port}", server.ca, tmp_path), cwd=tmp_path)
    assert lines == [
        f"{ERROR}127.0.0.1:{http_port} does not speak TLS (it answered in plain HTTP: a web "
        f"server?): is {http_port} the imgshare port? (imgshare serves TLS on 8443 unless "
        "told otherwise)"
    ]


def test_a_port_that_never_answers_times_out_soon(server: RunningServer, tmp_path: Path) -> None:
    """TCP connects (the kernel accepts into the backlog), TLS never starts."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        flags = _flags(f"127.0.0.1:{port}", server.ca, tmp_path)
        started = time.monotonic()
        lines = _fails("list", *flags, "--connect-timeout", "1", cwd=tmp_path)
        took = time.monotonic() - started
        by_env = _fails("list", *flags, cwd=tmp_path, env={"IMGSHARE_CONNECT_TIMEOUT": "1.5"})
    assert took < 5
    assert lines == [
        f"{ERROR}127.0.0.1:{port} accepted the connection but did not answer the TLS "
        f"handshake within 1 s: is {port} the imgshare port? (imgshare serves TLS on 8443 "
        "unless told otherwise) It may also be stuck or overloaded; --connect-timeout "
        "SECONDS (IMGSHARE_CONNECT_TIMEOUT) waits longer"
    ]
    assert "within 1.5 s" in by_env[0]


def test_connection_refused(server: RunningServer, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    lines = _fails("list", *_flags(f"127.0.0.1:{port}", server.ca, tmp_path), cwd=tmp_path)
    assert lines == [
        f"{ERROR}cannot connect to 127.0.0.1:{port}: connection refused, nothing listens on "
        f"port {port} there: is the server running, and is {port} its port? (imgshare serves "
        "on 8443 unless told otherwise)"
    ]


def test_url_forms_of_the_server(server: RunningServer, tmp_path: Path) -> None:
    for form in (f"https://localhost:{server.port}", f"imgshare://localhost:{server.port}/"):
        _ok("list", *_flags(form, server.ca, tmp_path), cwd=tmp_path)
    for form, message in (
        (f"http://localhost:{server.port}", "imgshare always talks TLS, so http:// does not fit"),
        (f"https://localhost:{server.port}/images", "without a path"),
        (f"localhost:{server.port}:{server.port}", "is not HOST:PORT"),
        ("localhost:99999", "the port must be a number from 1 to 65535"),
    ):
        (line,) = _fails("list", *_flags(form, server.ca, tmp_path), cwd=tmp_path)
        assert line.startswith(f"{ERROR}--server {form!r}") and message in line, line


def test_a_server_that_wants_a_client_certificate(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    clients = pki.init_certificates(tmp_path / "client-ca")
    server = make_server(client_ca=clients.ca_cert)
    (line,) = _fails("list", *_flags(f"localhost:{server.port}", server.ca, tmp_path), cwd=tmp_path)
    assert line == (
        f"{ERROR}localhost:{server.port} refused the TLS connection: it wants a client "
        "certificate (this server requires one): pass --client-cert FILE and --client-key "
        "FILE; its administrator issues them with `imgshare certs client NAME`"
    )


def test_the_library_says_the_same(server: RunningServer, pki_paths: pki.CertificatePaths) -> None:
    """``ClientSession.connect`` itself explains (the command line only adds names)."""
    from imgshare import tls
    from imgshare.errors import TransportError

    context = tls.create_client_context(pki_paths.ca_cert)
    with pytest.raises(TransportError) as caught:
        ClientSession.connect("127.0.0.1", server.port, context, connect_timeout=2)
    first = str(caught.value).splitlines()[0]
    assert first == (
        f"cannot trust 127.0.0.1:{server.port}: its certificate is signed by a CA you do not trust"
    )


# --- get ------------------------------------------------------------------------------------


@pytest.fixture
def alice(server: RunningServer, tmp_path: Path) -> list[str]:
    """alice's flags for ``server``."""
    return _flags(f"localhost:{server.port}", server.ca, tmp_path)


def test_get_into_a_folder_keeps_names_and_never_overwrites(
    server: RunningServer, alice: list[str], tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = noise_image(tmp_path / "a" / "cat.png", "PNG", seed=1).read_bytes()
    one = server.login().upload(tmp_path / "a" / "cat.png")
    second = noise_image(tmp_path / "b" / "cat.png", "PNG", seed=2).read_bytes()
    two = server.login().upload(tmp_path / "b" / "cat.png")  # same name, another image
    out = tmp_path / "out"
    out.mkdir()
    _ok("get", one.id, two.id, "-o", out, *alice, cwd=tmp_path)
    assert (out / "cat.png").read_bytes() == first
    assert (out / "cat-1.png").read_bytes() == second
    _ok("get", one.id[:8], "-o", out, *alice, cwd=tmp_path)
    assert (out / "cat-2.png").read_bytes() == first
    _ok("get", two.id, "-o", out, "--force", *alice, cwd=tmp_path)
    assert (out / "cat.png").read_bytes() == second
    assert sorted(p.name for p in out.iterdir()) == ["cat-1.png", "cat-2.png", "cat.png"]
    # several ids and one file cannot go together: said before connecting
    (line,) = _fails("get", one.id, two.id, "-o", tmp_path / "x.png", *alice, cwd=tmp_path)
    assert "is a file, and 2 images cannot all go there: give a folder" in line


def test_get_to_standard_output(server: RunningServer, alice: list[str], tmp_path: Path) -> None:
    image = noise_image(tmp_path / "dog.webp", "WEBP", seed=3)
    uploaded = server.login().upload(image)
    result = subprocess.run(
        [IMGSHARE, "get", uploaded.id, "-o", "-", *alice],
        cwd=tmp_path, env=environment(), stdin=subprocess.DEVNULL, capture_output=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == image.read_bytes()  # bytes, and nothing else
    assert f"HMAC of image on client side: {uploaded.hmac}" in result.stderr.decode()
    assert not (tmp_path / "-").exists()
    (line,) = _fails("get", uploaded.id, uploaded.id, "-o", "-", *alice, cwd=tmp_path)
    assert line == f"{ERROR}-o - writes one image to standard output: give one ID"


def test_an_unwritable_output_names_the_path_given(
    server: RunningServer, alice: list[str], tmp_path: Path
) -> None:
    uploaded = server.login().upload(noise_image(tmp_path / "a.png", "PNG"))
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing: use /sys
        locked = Path("/sys")
        if os.access(locked, os.W_OK) and locked.is_dir():
            try:
                (locked / "imgshare-probe").touch()
            except OSError:
                pass
            else:
                pytest.skip("/sys is writable here")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    target = locked / "a.png"
    (line,) = _fails("get", uploaded.id, "-o", target, *alice, cwd=tmp_path)
    assert line == f"{ERROR}cannot write {target}: Permission denied"
    (line,) = _fails("get", uploaded.id, "-o", locked, *alice, cwd=tmp_path)
    assert line == f"{ERROR}cannot write {locked}: Permission denied"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    (line,) = _fails("get", uploaded.id, "-o", a_file / "x.png", *alice, cwd=tmp_path)
    assert line == f"{ERROR}cannot write {a_file / 'x.png'}: there is no folder {a_file}"
    assert ".tmp" not in line


# --- id prefixes ----------------------------------------------------------------------------


def test_unique_prefixes_work_everywhere(
    server: RunningServer, alice: list[str], tmp_path: Path
) -> None:
    server.add_user("bob")
    image = noise_image(tmp_path / "p.png", "PNG", seed=5)
    uploaded = server.login().upload(image)
    prefix = uploaded.id[:8]
    assert _ok("share", prefix, "--with", "bob", *alice, cwd=tmp_path).startswith(
        f"shared {uploaded.id} with bob"
    )
    assert _ok("shares", prefix.upper(), *alice, cwd=tmp_path).startswith("bob ")
    # bob finds it by prefix among the images shared with him
    bob = [*alice]
    bob[bob.index("alice")] = "bob"
    out = tmp_path / "bob"
    out.mkdir()
    _ok("get", uploaded.id[:10], "-o", out, *bob, cwd=tmp_path)
    assert (out / "p.png").read_bytes() == image.read_bytes()
    (line,) = _fails("delete", prefix, "--yes", *bob, cwd=tmp_path)
    not_yours = f"{prefix} is an image alice shared with you, not yours: only its owner can"
    assert line == f"{ERROR}{not_yours} do that"
    _ok("unshare", prefix, "--with", "bob", *alice, cwd=tmp_path)
    assert (
        _ok("delete", prefix, "--yes", *alice, cwd=tmp_path) == f"deleted {uploaded.id} (p.png)\n"
    )
    assert catalog_images(server.data) == []


def test_short_unknown_and_ambiguous_prefixes(
    server: RunningServer, alice: list[str], tmp_path: Path
) -> None:
    session = server.login()
    one = session.upload(noise_image(tmp_path / "one.png", "PNG", seed=6))
    two = session.upload(noise_image(tmp_path / "two.png", "PNG", seed=7))
    for command in (["get"], ["share", "--with", "bob"], ["unshare", "--with", "bob"],
                    ["shares"], ["delete", "--yes"]):  # fmt: skip
        (line,) = _fails(*command, one.id[:7], *alice, cwd=tmp_path)
        assert line == (
            f"{ERROR}{one.id[:7]!r} is too short: give at least 8 hex digits of the id "
            "(see `imgshare list`)"
        )
    (line,) = _fails("get", "not-an-id", *alice, cwd=tmp_path)
    assert "is not an image id: ids are 32 hex digits" in line
    unknown = "f" * 8 if not one.id.startswith("ffffffff") else "e" * 8
    (line,) = _fails("get", unknown, *alice, cwd=tmp_path)
    assert line.startswith(f"{ERROR}no image of yours or shared with you has an id starting")
    # Two ids that share their first 12 digits: one renamed in the catalog (the list
    # reads only the catalog; no download happens for an ambiguous prefix).
    shared_start = one.id[:12]
    renamed = shared_start + two.id[12:]
    with closing(sqlite3.connect(server.data / "catalog.sqlite3")) as db, db:
        db.execute("UPDATE images SET id = ? WHERE id = ?", (renamed, two.id))
    lines = _fails("get", shared_start[:9], *alice, cwd=tmp_path)
    assert lines[0] == f"{ERROR}{shared_start[:9]} matches 2 images: give more digits of the id"
    assert sorted(line.split()[0] for line in lines[1:]) == sorted([one.id, renamed])
    assert all("one.png" in line or "two.png" in line for line in lines[1:])
    assert _ok("shares", one.id[:32], *alice, cwd=tmp_path) == ""


# --- help -----------------------------------------------------------------------------------

CLIENT_COMMANDS = [
    ["send"], ["get"], ["list"], ["share"], ["unshare"], ["shares"], ["delete"], ["register"],
    ["login"], ["passwd"], ["token", "create"], ["token", "list"], ["token", "revoke"],
]  # fmt: skip
VARIABLES = [
    "IMGSHARE_SERVER", "IMGSHARE_CA", "IMGSHARE_USER", "IMGSHARE_PASSWORD", "IMGSHARE_TOKEN",
    "IMGSHARE_CONFIG", "IMGSHARE_CONNECT_TIMEOUT",
]  # fmt: skip


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
def test_help_shows_every_environment_variable(command: list[str], tmp_path: Path) -> None:
    text = _ok(*command, "--help", cwd=tmp_path)
    missing = [name for name in VARIABLES if name not in text]
    assert not missing, f"imgshare {' '.join(command)} --help lacks {missing}"
    assert re.search(r"\[env\s+var:\s+IMGSHARE_SERVER\]", text)  # beside the flag, too


def test_no_summary_is_cut_off(tmp_path: Path) -> None:
    for group in ([], ["token"], ["certs"], ["user"]):
        text = _ok(*group, "--help", cwd=tmp_path, env={"COLUMNS": "80"})
        commands = text.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
        for line in commands.splitlines():
            assert not line.rstrip().endswith("..."), f"imgshare {' '.join(group)}: {line}"
    root = _ok("--help", cwd=tmp_path)
    assert all(name in root for name in VARIABLES)


# --- a README that works from any folder ------------------------------------------------------


def test_the_readme_steps_work_from_any_folder(server: RunningServer, tmp_path: Path) -> None:
    """``make install``, then ``imgshare login`` once with the CA, then commands with no
    flags from another folder, in a fresh HOME. The trust comes from the profile: a
    ``data/certs/ca.pem`` in the current folder is never used."""
    readme = (REPO / "README.md").read_text()
    assert "make install " in readme
    assert "imgshare login --server localhost:8443 --ca data/certs/ca.pem --user alice" in readme
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": f"{home}/.local/bin:/usr/bin:/bin"}
    # `make install` as the README says; its venv is the one running these tests
    # (-o: do not reinstall it here).
    make = subprocess.run(
        ["make", "-o", ".venv/.installed", "install"], cwd=REPO, capture_output=True,
        text=True, env={**environment(env), "PATH": os.environ["PATH"]}, timeout=120,
        check=False,
    )  # fmt: skip
    assert make.returncode == 0, make.stdout + make.stderr
    link = home / ".local" / "bin" / "imgshare"
    assert link.is_symlink()
    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    command = ["imgshare"]  # found on PATH, from ~/.local/bin
    run_env = {**env, "XDG_CONFIG_HOME": str(home / ".config")}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *map(str, args)], cwd=anywhere, env=environment(run_env),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    # no profile, no --ca: refused with what to do, even with a data/certs/ca.pem here
    (anywhere / "data" / "certs").mkdir(parents=True)
    shutil.copy(server.ca, anywhere / "data" / "certs" / "ca.pem")
    refused = run("list", "--server", f"localhost:{server.port}", "--user", "alice")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"{ERROR}give --ca CA.pem: the ca.pem of the server's")
    shutil.rmtree(anywhere / "data")
    login = run(
        "login", "--server", f"localhost:{server.port}", "--ca", server.ca, "--user", "alice",
        "--password-file", _password_file(tmp_path),
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert (home / ".config" / "imgshare" / "profile.json").is_file()
    photo = noise_image(anywhere / "photo.jpg", "JPEG", seed=9)
    sent = run("send", "photo.jpg")
    assert sent.returncode == 0, sent.stderr
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    (row,) = listed.stdout.splitlines()
    assert row.endswith("photo.jpg")
    (anywhere / "back").mkdir()
    fetched = run("get", row.split()[0][:8], "-o", "back")
    assert fetched.returncode == 0, fetched.stderr
    assert (anywhere / "back" / "photo.jpg").read_bytes() == photo.read_bytes()
