"""imgshare.pki: the certificate generator, checked against the openssl command line."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from imgshare import pki
from imgshare.errors import CertificateError, ConfigError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args: str | Path) -> str:
    """Run the openssl command line (our independent check) and return its stdout."""
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def x509_text(path: Path) -> str:
    return openssl("x509", "-in", path, "-noout", "-text")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask after a test changed it."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


# --- the profile, as openssl sees it ------------------------------------------------------


def test_openssl_verifies_server_and_client_against_the_ca(pki_paths: pki.CertificatePaths) -> None:
    ca = pki_paths.ca_cert
    out = openssl("verify", "-CAfile", ca, "-purpose", "sslserver", pki_paths.server_cert)
    assert "OK" in out
    alice = pki_paths.directory / "alice.pem"
    assert "OK" in openssl("verify", "-CAfile", ca, "-purpose", "sslclient", alice)
    assert "OK" in openssl("verify", "-x509_strict", "-CAfile", ca, pki_paths.server_cert)


def test_openssl_refuses_server_certificate_for_client_purpose(
    pki_paths: pki.CertificatePaths,
) -> None:
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(pki_paths.ca_cert),
            "-purpose",
            "sslclient",
            str(pki_paths.server_cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_ca_profile(pki_paths: pki.CertificatePaths) -> None:
    text = x509_text(pki_paths.ca_cert)
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:0" in text
    assert "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign" in text
    assert "Signature Algorithm: ecdsa-with-SHA256" in text
    assert "id-ecPublicKey" in text and "prime256v1" in text
    assert "Subject Key Identifier" in text and "Authority Key Identifier" in text
    cert = pki.load_certificate(pki_paths.ca_cert)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=pki.DEFAULT_CA_DAYS) + pki.CLOCK_SKEW


def test_server_profile(pki_paths: pki.CertificatePaths) -> None:
    text = x509_text(pki_paths.server_cert)
    assert "X509v3 Basic Constraints: critical\n                CA:FALSE" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature\n" in text
    assert "TLS Web Server Authentication" in text
    assert "TLS Web Client Authentication" not in text
    assert "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1" in text
    assert "Subject: CN = localhost" in text
    assert "id-ecPublicKey" in text and "prime256v1" in text
    assert "Authority Key Identifier" in text
    cert = pki.load_certificate(pki_paths.server_cert)
    assert 0 < cert.serial_number < 2**159
    now = datetime.now(UTC)
    # notBefore lies a few minutes back, to tolerate clients whose clocks run late.
    assert now - timedelta(minutes=10) < cert.not_valid_before_utc < now - timedelta(minutes=4)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=pki.DEFAULT_SERVER_DAYS) + pki.CLOCK_SKEW


def test_client_profile(pki_paths: pki.CertificatePaths) -> None:
    text = x509_text(pki_paths.directory / "alice.pem")
    assert "CA:FALSE" in text and "Digital Signature" in text
    assert "TLS Web Client Authentication" in text
    assert "TLS Web Server Authentication" not in text
    assert "Subject: CN = alice" in text
    cert = pki.load_certificate(pki_paths.directory / "alice.pem")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=pki.DEFAULT_CLIENT_DAYS) + pki.CLOCK_SKEW


def test_rsa_keys(tmp_path: Path) -> None:
    paths = pki.init_certificates(tmp_path, key_type="rsa", hosts=["rsa.example"])
    text = x509_text(paths.server_cert)
    assert "rsaEncryption" in text and "Public-Key: (3072 bit)" in text
    assert "Digital Signature, Key Encipherment" in text
    assert "sha256WithRSAEncryption" in text
    assert "OK" in openssl("verify", "-CAfile", paths.ca_cert, paths.server_cert)
    assert "Public-Key: (3072 bit)" in x509_text(paths.ca_cert)


def test_hosts_become_dns_and_ip_sans(tmp_path: Path) -> None:
    hosts = ["Images.Example.org", "10.0.0.7", "2001:db8::1", "images.example.org"]
    paths = pki.init_certificates(tmp_path, hosts=hosts)
    text = x509_text(paths.server_cert)
    assert "DNS:images.example.org, IP Address:10.0.0.7, IP Address:2001:DB8:0:0:0:0:0:1\n" in text
    assert "Subject: CN = images.example.org" in text


def test_fingerprint_matches_openssl(pki_paths: pki.CertificatePaths) -> None:
    out = openssl("x509", "-in", pki_paths.server_cert, "-noout", "-fingerprint", "-sha256")
    expected = out.strip().split("=", 1)[1]
    assert pki.fingerprint_sha256(pki.load_certificate(pki_paths.server_cert)) == expected


def test_describe_certificate(pki_paths: pki.CertificatePaths) -> None:
    info = pki.describe_certificate(pki.load_certificate(pki_paths.server_cert))
    assert info.sans == ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
    assert info.key_type == "ECDSA P-256 (secp256r1)"
    assert info.extended_key_usage == ("serverAuth",) and not info.is_ca and not info.expired
    assert info.subject == "CN=localhost" and info.issuer.startswith("CN=imgshare private CA")
    later = pki.describe_certificate(
        pki.load_certificate(pki_paths.server_cert), now=info.not_after + timedelta(seconds=1)
    )
    assert later.expired


# --- files: modes, no overwrite, force ---------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o077])
def test_key_files_are_0600_and_certificates_0644_whatever_the_umask(
    tmp_path: Path, mask: int, umask: None
) -> None:
    os.umask(mask)
    paths = pki.init_certificates(tmp_path / "certs")
    client = pki.create_client_certificate(paths.directory, "bob")
    for key in (paths.ca_key, paths.server_key, client.key):
        assert mode_of(key) == 0o600
    for cert in (paths.ca_cert, paths.server_cert, client.cert):
        assert mode_of(cert) == 0o644
    assert mode_of(paths.directory) == 0o700 & ~mask


def test_existing_files_are_never_overwritten_without_force(tmp_path: Path) -> None:
    paths = pki.init_certificates(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CertificateError, match=r"ca\.key already exists; use --force"):
        pki.init_certificates(tmp_path)
    paths.server_cert.unlink()  # only one file missing: still nothing is written
    with pytest.raises(CertificateError, match="already exists"):
        pki.init_certificates(tmp_path)
    assert not paths.server_cert.exists()
    assert all(p.read_bytes() == data for p, data in before.items() if p.exists())


def test_a_symlink_in_the_way_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "server.key").symlink_to(victim)
    with pytest.raises(CertificateError, match="already exists"):
        pki.init_certificates(tmp_path / "certs")
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["server.key"]


def test_force_replaces_atomically(tmp_path: Path, umask: None) -> None:
    os.umask(0)
    first = pki.init_certificates(tmp_path)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    pki.init_certificates(tmp_path, force=True, hosts=["new.example"])
    new = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(new) == ["ca.key", "ca.pem", "server.key", "server.pem"]  # no temp files left
    assert all(old[name] != new[name] for name in new)
    assert mode_of(first.ca_key) == 0o600 and mode_of(first.server_key) == 0o600
    assert "DNS:new.example" in x509_text(first.server_cert)


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CertificateError, match=r"cannot create folder .*file/sub: Not a directory"):
        pki.init_certificates(blocker / "sub")
    with pytest.raises(CertificateError, match="cannot create"):
        pki.init_certificates("/proc/imgshare-test")


def test_encrypted_keys(tmp_path: Path) -> None:
    paths = pki.init_certificates(tmp_path, passphrase=b"correct horse")
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in paths.ca_key.read_bytes()
    # openssl can open it with the passphrase, so it is standard PKCS#8.
    out = openssl("pkey", "-in", paths.ca_key, "-passin", "pass:correct horse", "-noout", "-text")
    assert "prime256v1" in out
    assert pki.load_private_key(paths.ca_key, b"correct horse")
    with pytest.raises(CertificateError, match=r"^wrong passphrase for .*ca\.key$") as info:
        pki.load_private_key(paths.ca_key, b"wrong horse")
    assert "horse" not in str(info.value)
    with pytest.raises(CertificateError, match="is encrypted: its passphrase is needed"):
        pki.load_private_key(paths.ca_key)
    with pytest.raises(CertificateError, match="wrong passphrase"):
        pki.create_client_certificate(tmp_path, "carol", ca_passphrase=b"nope")
    client = pki.create_client_certificate(tmp_path, "carol", ca_passphrase=b"correct horse")
    assert b"BEGIN PRIVATE KEY" in client.key.read_bytes()


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty passphrase"):
        pki.init_certificates(tmp_path, passphrase=b"")
    assert list(tmp_path.iterdir()) == []


def test_read_passphrase_file(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_bytes(b"s3cret words \r\nsecond line\n")
    assert pki.read_passphrase_file(secret) == b"s3cret words "
    secret.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="is empty"):
        pki.read_passphrase_file(secret)
    with pytest.raises(ConfigError, match="cannot read passphrase file"):
        pki.read_passphrase_file(tmp_path / "missing")


def test_key_that_does_not_match_the_ca_is_refused(tmp_path: Path) -> None:
    paths = pki.init_certificates(tmp_path)
    shutil.copy(paths.server_key, paths.ca_key)
    with pytest.raises(CertificateError, match=r"ca\.key is not the key of .*ca\.pem"):
        pki.load_ca(tmp_path)


def test_garbage_files_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(CertificateError, match="does not hold a PEM certificate"):
        pki.load_certificate(junk)
    with pytest.raises(CertificateError, match="does not hold a PEM private key"):
        pki.load_private_key(junk)
    with pytest.raises(CertificateError, match="cannot read"):
        pki.load_certificate(tmp_path / "missing.pem")


# --- what the user types -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", x509.DNSName("localhost")),
        ("Img-1.Example.COM", x509.DNSName("img-1.example.com")),
        ("127.0.0.1", x509.IPAddress(ip_address("127.0.0.1"))),
        ("::1", x509.IPAddress(ip_address("::1"))),
        ("a" * 63 + ".b", x509.DNSName("a" * 63 + ".b")),
    ],
)
def test_valid_hosts(host: str, expected: x509.GeneralName) -> None:
    assert pki.parse_host(host) == expected


@pytest.mark.parametrize(
    "host",
    ["bad_host!", "-x.com", "x-.com", "a..b", "", ".", "*.example.com", "a" * 64 + ".b",
     ".".join(["abcdefg"] * 32), "1.2.3", "256.1.1.1", "fe80::1%eth0", "exa mple", "bücher.de",
     "example.com."],
)  # fmt: skip
def test_invalid_hosts(host: str) -> None:
    with pytest.raises(ConfigError, match="invalid host"):
        pki.parse_host(host)


@pytest.mark.parametrize("name", ["alice", "bob-2.laptop", "0svc", "a" * 32])
def test_valid_client_names(name: str) -> None:
    assert pki.check_client_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".hidden",
        "..",
        "../evil",
        "a/b",
        "a\\b",
        "ca",
        "Server",
        "a b",
        "a" * 33,
        "_svc",
        "Alice",
    ],
)
def test_invalid_client_names(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid client name"):
        pki.check_client_name(name)


@pytest.mark.parametrize("days", [0, -1, pki.MAX_DAYS + 1])
def test_bad_validity_is_refused_before_anything_is_written(tmp_path: Path, days: int) -> None:
    with pytest.raises(ConfigError, match="validity must be 1 to"):
        pki.init_certificates(tmp_path / "a", days=days)
    with pytest.raises(ConfigError, match="validity must be 1 to"):
        pki.init_certificates(tmp_path / "b", ca_days=days)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_invalid_host_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'a\.\.b'"):
        pki.init_certificates(tmp_path / "x", hosts=["localhost", "a..b"])
    assert not (tmp_path / "x").exists()


def test_leaf_never_outlives_its_ca() -> None:
    ca = pki.generate_ca(days=10)
    leaf = pki.issue_client_certificate(ca, "dave", days=365)
    assert leaf.certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc
    expired = pki.generate_ca(days=1, now=datetime(2001, 1, 1, tzinfo=UTC))
    with pytest.raises(CertificateError, match="the CA certificate expired on 2001-01-02"):
        pki.issue_server_certificate(expired)


# --- the server's first start ------------------------------------------------------------


def test_ensure_server_certificates_creates_then_reuses_then_renews(tmp_path: Path) -> None:
    paths = pki.ensure_server_certificates(tmp_path / "certs")
    ca_pem, server_pem = paths.ca_cert.read_bytes(), paths.server_cert.read_bytes()
    assert pki.ensure_server_certificates(tmp_path / "certs") == paths
    assert paths.server_cert.read_bytes() == server_pem
    paths.server_cert.unlink()
    paths.server_key.unlink()
    pki.ensure_server_certificates(tmp_path / "certs")  # renew from the same CA
    assert paths.ca_cert.read_bytes() == ca_pem
    assert paths.server_cert.read_bytes() != server_pem
    assert "OK" in openssl("verify", "-CAfile", paths.ca_cert, paths.server_cert)
    paths.ca_key.unlink()  # the CA key may live offline
    assert pki.ensure_server_certificates(tmp_path / "certs") == paths
    paths.server_key.unlink()
    with pytest.raises(CertificateError, match=r"incomplete .* server\.key missing"):
        pki.ensure_server_certificates(tmp_path / "certs")


# --- verify_server_certificate (for the application handshake) ---------------------------


def _der(path: Path) -> bytes:
    return pki.load_certificate(path).public_bytes(Encoding.DER)


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "::1", "[::1]"])
def test_verify_server_certificate_accepts_its_names(
    pki_paths: pki.CertificatePaths, host: str
) -> None:
    anchors = [pki.load_certificate(pki_paths.ca_cert)]
    leaf = pki.verify_server_certificate(_der(pki_paths.server_cert), anchors, host)
    assert leaf == pki.load_certificate(pki_paths.server_cert)


def test_verify_server_certificate_refusals(pki_paths: pki.CertificatePaths) -> None:
    anchors = [pki.load_certificate(pki_paths.ca_cert)]
    server = _der(pki_paths.server_cert)
    with pytest.raises(CertificateError, match=r"not trusted for example\.com"):
        pki.verify_server_certificate(server, anchors, "example.com")
    with pytest.raises(CertificateError, match=r"not trusted for 127\.0\.0\.2"):
        pki.verify_server_certificate(server, anchors, "127.0.0.2")
    with pytest.raises(CertificateError, match="not trusted"):  # clientAuth only
        pki.verify_server_certificate(_der(pki_paths.directory / "alice.pem"), anchors, "alice")
    later = datetime.now(UTC) + timedelta(days=pki.DEFAULT_SERVER_DAYS + 1)
    with pytest.raises(CertificateError, match="not trusted"):
        pki.verify_server_certificate(server, anchors, "localhost", now=later)
    other_ca = pki.generate_ca().certificate
    with pytest.raises(CertificateError, match="not trusted"):
        pki.verify_server_certificate(server, [other_ca], "localhost")
    with pytest.raises(CertificateError, match="not valid DER"):
        pki.verify_server_certificate(b"\x30\x03junk", anchors, "localhost")
    with pytest.raises(CertificateError, match="no trusted CA"):
        pki.verify_server_certificate(server, [], "localhost")


def test_verify_server_certificate_rsa_and_custom_hosts() -> None:
    ca = pki.generate_ca()
    leaf = pki.issue_server_certificate(ca, ["img.example", "192.0.2.5"], key_type="rsa")
    der = leaf.certificate.public_bytes(Encoding.DER)
    for host in ("img.example", "192.0.2.5"):
        pki.verify_server_certificate(der, [ca.certificate], host)
    with pytest.raises(CertificateError):
        pki.verify_server_certificate(der, [ca.certificate], "localhost")
