"""`imgshare certs ...` through the real dispatcher: exit status and one-line errors."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imgshare import pki
from imgshare.cli import main

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    status = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def fails(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """Run a command that must fail with exit 1 and one clear line; return that line."""
    status, out, err = run(capsys, *args)
    assert status == 1, (out, err)
    assert err.startswith("imgshare: error: ") and err.count("\n") == 1, err
    return err


def openssl_fingerprint(path: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split("=", 1)[1]


@needs_openssl
def test_init_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "certs", "init", "--dir", tmp_path / "c", "--host", "img.test")
    assert status == 0
    assert "ca.pem" in out and "server.key" in out
    status, _, _ = run(capsys, "certs", "client", "alice", "--dir", tmp_path / "c")
    assert status == 0
    status, out, _ = run(capsys, "certs", "show", "--dir", tmp_path / "c")
    assert status == 0
    for name in ("ca.pem", "server.pem", "alice.pem"):
        assert name in out
        assert openssl_fingerprint(tmp_path / "c" / name) in out
    assert "DNS:img.test" in out and "CN=alice" in out and "clientAuth" in out
    assert "ECDSA P-256" in out and "EXPIRED" not in out


def test_show_marks_expired_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki.init_certificates(tmp_path, now=datetime(2001, 1, 1, tzinfo=UTC))
    status, out, _ = run(capsys, "certs", "show", "--dir", tmp_path)
    assert status == 0
    assert "not after:   2001-04-01 00:00:00 UTC  EXPIRED" in out


def test_show_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no certificates" in fails(capsys, "certs", "show", "--dir", tmp_path)
    assert "is not a folder" in fails(capsys, "certs", "show", "--dir", tmp_path / "nope")
    (tmp_path / "bad.pem").write_text("junk")
    assert "does not hold a PEM certificate" in fails(capsys, "certs", "show", "--dir", tmp_path)


def test_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "certs", "init", "--dir", tmp_path)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    err = fails(capsys, "certs", "init", "--dir", tmp_path)
    assert "ca.key already exists" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert run(capsys, "certs", "init", "--dir", tmp_path, "--force")[0] == 0
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(after) == sorted(before)
    assert all(after[name] != before[name] for name in before)


def test_unwritable_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("a file, not a folder")  # root ignores mode bits
    err = fails(capsys, "certs", "init", "--dir", tmp_path / "file" / "sub")
    assert "cannot create folder" in err and "Not a directory" in err
    assert "cannot create" in fails(capsys, "certs", "init", "--dir", "/proc/imgshare-test")


@pytest.mark.parametrize("host", ["bad_host!", "-x.com", "a..b", "*.example.com", "300.1.1.1"])
def test_invalid_host(tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str) -> None:
    err = fails(capsys, "certs", "init", "--dir", tmp_path / "c", "--host", host)
    assert f"invalid host {host!r}" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("flag", "value"), [("--days", "0"), ("--days", "-3"), ("--ca-days", "0")])
def test_bad_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    err = fails(capsys, "certs", "init", "--dir", tmp_path / "c", flag, value)
    assert f"{flag} must be 1 to" in err and f"got {value}" in err
    assert not (tmp_path / "c").exists()


def test_client_needs_a_safe_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki.init_certificates(tmp_path)
    for name in ("../evil", ".hidden", "a/b", "ca", "server"):
        assert "invalid client name" in fails(capsys, "certs", "client", name, "--dir", tmp_path)
    assert not (tmp_path.parent / "evil.pem").exists()
    assert "--days must be" in fails(
        capsys, "certs", "client", "x", "--dir", tmp_path, "--days", "0"
    )


def test_client_without_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, "certs", "client", "alice", "--dir", tmp_path)
    assert "cannot read" in err and "ca.pem" in err


def test_encrypted_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret, wrong, empty = tmp_path / "pass", tmp_path / "wrong", tmp_path / "empty"
    secret.write_text("tr0ub4dor&3\n")
    wrong.write_text("hunter2\n")
    empty.write_text("")
    d = tmp_path / "c"
    assert run(capsys, "certs", "init", "--dir", d, "--passphrase-file", secret)[0] == 0
    assert "encrypted" in fails(capsys, "certs", "client", "bob", "--dir", d)
    err = fails(capsys, "certs", "client", "bob", "--dir", d, "--ca-passphrase-file", wrong)
    assert "wrong passphrase for" in err and "ca.key" in err and "hunter2" not in err
    err = fails(capsys, "certs", "client", "bob", "--dir", d, "--ca-passphrase-file", empty)
    assert "is empty" in err
    status, out, _ = run(
        capsys, "certs", "client", "bob", "--dir", d, "--ca-passphrase-file", secret
    )
    assert status == 0 and "bob.pem" in out
    assert "tr0ub4dor" not in out


@needs_openssl
def test_server_command_renews_from_the_same_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = pki.init_certificates(tmp_path)
    ca_pem, server_pem = paths.ca_cert.read_bytes(), paths.server_cert.read_bytes()
    assert "already exists" in fails(capsys, "certs", "server", "--dir", tmp_path)
    status, _, _ = run(
        capsys, "certs", "server", "--dir", tmp_path, "--force", "--host", "10.1.2.3"
    )
    assert status == 0
    assert paths.ca_cert.read_bytes() == ca_pem and paths.server_cert.read_bytes() != server_pem
    subprocess.run(
        ["openssl", "verify", "-CAfile", str(paths.ca_cert), str(paths.server_cert)], check=True,
        capture_output=True,
    )  # fmt: skip


def test_rsa_key_type_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki.init_certificates(tmp_path)  # EC CA, RSA client key: key types may mix
    status, _, _ = run(capsys, "certs", "client", "carol", "--dir", tmp_path, "--key-type", "rsa")
    assert status == 0
    info = pki.describe_certificate(pki.load_certificate(tmp_path / "carol.pem"))
    assert info.key_type == "RSA 3072 bit"


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "certs", "client", "--help")
    assert status == 0
    assert "mutual TLS" in out and "[default: 365]" in out
    status, out, _ = run(capsys, "certs", "init", "--help")
    assert status == 0
    assert "[default: 90]" in out and "[default: 3650]" in out and "--force" in out
