"""imgshare.tls: real handshakes on 127.0.0.1 between our contexts and openssl s_client."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imgshare import pki, tls
from imgshare.errors import CertificateError, ConfigError

TIMEOUT = 10.0


@dataclass
class ServerSide:
    """What the server thread saw of one connection."""

    port: int
    handshake_done: bool = False
    error: BaseException | None = None
    peer_cert: dict[str, object] | None = None
    done: threading.Event = field(default_factory=threading.Event)


@contextmanager
def serve_once(context: ssl.SSLContext) -> Iterator[ServerSide]:
    """Accept one TLS connection on 127.0.0.1 in a thread, greet it with b"ok"."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        side = ServerSide(port=listener.getsockname()[1])

        def run() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with context.wrap_socket(conn, server_side=True) as tls_conn:
                    side.handshake_done = True
                    side.peer_cert = tls_conn.getpeercert()
                    tls_conn.sendall(b"ok")
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                if not side.handshake_done:
                    side.error = exc
            finally:
                side.done.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield side
        finally:
            thread.join(TIMEOUT)
            assert not thread.is_alive()


@dataclass
class Outcome:
    server: ServerSide
    client_error: BaseException | None
    version: str | None = None
    cipher: str | None = None


def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, hostname: str = "localhost"
) -> Outcome:
    """Connect a client to a server and read the greeting (TLS 1.3 reports a refused
    client certificate only after the client's side of the handshake is done)."""
    with serve_once(server_context) as server:
        version = cipher = None
        error: BaseException | None = None
        try:
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw,
                client_context.wrap_socket(raw, server_hostname=hostname) as conn,
            ):
                version, cipher = conn.version(), conn.cipher()
                if conn.recv(2) != b"ok":
                    raise ConnectionError("closed without greeting")
        except OSError as exc:
            error = exc
        server.done.wait(TIMEOUT)
    return Outcome(server, error, version, cipher[0] if cipher else None)


def ok(outcome: Outcome) -> bool:
    return outcome.server.handshake_done and outcome.client_error is None


@pytest.fixture(scope="module")
def server_context(pki_paths: pki.CertificatePaths) -> ssl.SSLContext:
    return tls.create_server_context(pki_paths.server_cert, pki_paths.server_key)


@pytest.fixture(scope="module")
def client_context(pki_paths: pki.CertificatePaths) -> ssl.SSLContext:
    return tls.create_client_context(pki_paths.ca_cert)


# --- server identity ---------------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_client_trusting_our_ca_accepts_the_server(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, hostname: str
) -> None:
    outcome = handshake(server_context, client_context, hostname)
    assert ok(outcome), outcome
    assert outcome.version == "TLSv1.3"


def test_wrong_hostname_is_refused(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    outcome = handshake(server_context, client_context, "example.com")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(outcome.client_error)


def test_client_not_trusting_our_ca_is_refused(
    server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    other = pki.init_certificates(tmp_path)
    outcome = handshake(server_context, tls.create_client_context(other.ca_cert))
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_client_trusts_cadata_too(
    server_context: ssl.SSLContext, pki_paths: pki.CertificatePaths
) -> None:
    context = tls.create_client_context(cadata=pki_paths.ca_cert.read_text())
    assert ok(handshake(server_context, context))


# --- mutual TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_server(pki_paths: pki.CertificatePaths) -> ssl.SSLContext:
    return tls.create_server_context(
        pki_paths.server_cert, pki_paths.server_key, client_ca=pki_paths.ca_cert
    )


def test_client_certificate_is_accepted(
    mtls_server: ssl.SSLContext, pki_paths: pki.CertificatePaths
) -> None:
    alice = pki_paths.directory / "alice"
    context = tls.create_client_context(
        pki_paths.ca_cert, client_cert=f"{alice}.pem", client_key=f"{alice}.key"
    )
    outcome = handshake(mtls_server, context)
    assert ok(outcome), outcome
    assert outcome.server.peer_cert is not None
    assert ((("commonName", "alice"),),) == outcome.server.peer_cert["subject"]


def test_server_certificate_is_refused_as_client_certificate(
    mtls_server: ssl.SSLContext, pki_paths: pki.CertificatePaths
) -> None:
    context = tls.create_client_context(
        pki_paths.ca_cert, client_cert=pki_paths.server_cert, client_key=pki_paths.server_key
    )
    outcome = handshake(mtls_server, context)
    assert not outcome.server.handshake_done
    assert "unsuitable certificate purpose" in str(outcome.server.error)
    assert outcome.client_error is not None


def test_missing_client_certificate_is_refused(
    mtls_server: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    outcome = handshake(mtls_server, client_context)
    assert not outcome.server.handshake_done
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(outcome.server.error)
    assert outcome.client_error is not None


def test_client_certificate_from_another_ca_is_refused(
    mtls_server: ssl.SSLContext, pki_paths: pki.CertificatePaths, tmp_path: Path
) -> None:
    pki.init_certificates(tmp_path)
    mallory = pki.create_client_certificate(tmp_path, "mallory")
    context = tls.create_client_context(
        pki_paths.ca_cert, client_cert=mallory.cert, client_key=mallory.key
    )
    outcome = handshake(mtls_server, context)
    assert not outcome.server.handshake_done
    assert "certificate verify failed" in str(outcome.server.error)


# --- protocol versions and ciphers -------------------------------------------------------


def tls12_client(pki_paths: pki.CertificatePaths, ciphers: str | None = None) -> ssl.SSLContext:
    """A client that speaks TLS 1.2 at most (plain ssl, not our factory)."""
    context = ssl.create_default_context(cafile=str(pki_paths.ca_cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def test_tls12_client_is_refused_by_default(
    server_context: ssl.SSLContext, pki_paths: pki.CertificatePaths
) -> None:
    outcome = handshake(server_context, tls12_client(pki_paths))
    assert not outcome.server.handshake_done
    assert "UNSUPPORTED_PROTOCOL" in str(outcome.server.error)


def test_tls12_allowed_on_request_with_ecdhe_aead_only(pki_paths: pki.CertificatePaths) -> None:
    context = tls.create_server_context(
        pki_paths.server_cert, pki_paths.server_key, min_version="1.2"
    )
    outcome = handshake(context, tls12_client(pki_paths))
    assert ok(outcome), outcome
    assert outcome.version == "TLSv1.2"
    assert outcome.cipher in tls.TLS12_CIPHERS.split(":")
    # A TLS 1.2 client offering only CBC suites finds nothing in common.
    cbc = handshake(context, tls12_client(pki_paths, "ECDHE-ECDSA-AES128-SHA256"))
    assert not cbc.server.handshake_done
    assert "NO_SHARED_CIPHER" in str(cbc.server.error)
    # ...while it would have been accepted by Python's default server settings.
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.load_cert_chain(pki_paths.server_cert, pki_paths.server_key)
    assert ok(handshake(plain, tls12_client(pki_paths, "ECDHE-ECDSA-AES128-SHA256")))


def test_hardening_options(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    for context in (server_context, client_context):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.options & ssl.OP_NO_COMPRESSION
        assert context.options & ssl.OP_NO_RENEGOTIATION
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
    assert server_context.options & ssl.OP_NO_TICKET and server_context.num_tickets == 0
    assert client_context.verify_mode == ssl.CERT_REQUIRED and client_context.check_hostname
    assert server_context.verify_mode == ssl.CERT_NONE


# --- key-exchange groups, checked with openssl s_client ----------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def s_client(context: ssl.SSLContext, ca: Path, *args: str) -> tuple[ServerSide, str]:
    with serve_once(context) as server:
        result = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{server.port}",
                "-CAfile",
                str(ca),
                "-servername",
                "localhost",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        server.done.wait(TIMEOUT)
    return server, result.stdout


@needs_openssl
@pytest.mark.parametrize(
    ("group", "temp_key"),
    [("X25519", "X25519"), ("P-256", "prime256v1"), ("P-384", "secp384r1")],
)
def test_allowed_groups_handshake(
    server_context: ssl.SSLContext, pki_paths: pki.CertificatePaths, group: str, temp_key: str
) -> None:
    server, out = s_client(server_context, pki_paths.ca_cert, "-groups", group)
    assert server.handshake_done, server.error
    assert f"Server Temp Key: {temp_key}" in out.replace("ECDH, ", "")
    assert "Verify return code: 0 (ok)" in out


@needs_openssl
@pytest.mark.parametrize("group", ["X448", "P-521", "ffdhe2048"])
def test_other_groups_are_refused(
    server_context: ssl.SSLContext, pki_paths: pki.CertificatePaths, group: str
) -> None:
    server, out = s_client(server_context, pki_paths.ca_cert, "-groups", group)
    assert not server.handshake_done
    assert "NO_SUITABLE_KEY_SHARE" in str(server.error)
    assert "Server Temp Key" not in out


@needs_openssl
def test_the_groups_check_would_notice_openssl_defaults(pki_paths: pki.CertificatePaths) -> None:
    # Control: without restrict_groups, OpenSSL happily agrees on X448. This proves
    # that the refusal above comes from our restriction, not from s_client.
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.load_cert_chain(pki_paths.server_cert, pki_paths.server_key)
    server, out = s_client(plain, pki_paths.ca_cert, "-groups", "X448")
    assert server.handshake_done
    assert "Server Temp Key: X448" in out


@needs_openssl
def test_tls12_client_is_refused_by_default_per_openssl(
    server_context: ssl.SSLContext, pki_paths: pki.CertificatePaths
) -> None:
    server, _ = s_client(server_context, pki_paths.ca_cert, "-tls1_2")
    assert not server.handshake_done


def test_restrict_groups_works_here() -> None:
    # CPython 3.11 on Linux: the ctypes route must work, or the policy silently weakens.
    assert tls.restrict_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    assert tls.restrict_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


def test_client_offers_only_the_allowed_groups(
    pki_paths: pki.CertificatePaths, client_context: ssl.SSLContext
) -> None:
    x448_only = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    x448_only.load_cert_chain(pki_paths.server_cert, pki_paths.server_key)
    assert tls.restrict_groups(x448_only, ("X448",))
    outcome = handshake(x448_only, client_context)
    assert not outcome.server.handshake_done and outcome.client_error is not None
    plain_client = ssl.create_default_context(cafile=str(pki_paths.ca_cert))
    assert ok(handshake(x448_only, plain_client))


def test_restrict_groups_fails_safe(
    pki_paths: pki.CertificatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki_paths.server_cert, pki_paths.server_key)
    with caplog.at_level(logging.WARNING, logger="imgshare.tls"):
        assert not tls.restrict_groups(context, ("no-such-group",))
    assert "defaults stay on" in caplog.text
    client = tls.create_client_context(pki_paths.ca_cert)
    assert ok(handshake(context, client))  # the context still works, with the defaults


# --- loading errors ----------------------------------------------------------------------


_server, _client = tls.create_server_context, tls.create_client_context
LOADING_ERRORS: list[tuple[type[Exception], str, Callable[[pki.CertificatePaths], object]]] = [
    (CertificateError, r"cannot read .*nope\.pem",
     lambda p: _server(p.directory / "nope.pem", p.server_key)),
    (CertificateError, "does not belong", lambda p: _server(p.server_cert, p.ca_key)),
    (CertificateError, "not a PEM", lambda p: _server(p.server_cert, p.ca_cert)),
    (CertificateError, "cannot read CA file", lambda p: _client(p.directory / "nope.pem")),
    (CertificateError, "cannot load CA", lambda p: _client(p.server_key)),
    (CertificateError, "cannot load CA",
     lambda p: _server(p.server_cert, p.server_key, client_ca=p.server_key)),
    (ConfigError, "without its client certificate",
     lambda p: _client(p.ca_cert, client_key=p.server_key)),
    (ConfigError, "'1.1'", lambda p: _server(p.server_cert, p.server_key, min_version="1.1")),
    (ConfigError, "'1.0'", lambda p: _client(p.ca_cert, min_version="1.0")),
]  # fmt: skip


@pytest.mark.parametrize(("error", "pattern", "make"), LOADING_ERRORS)
def test_loading_errors(
    pki_paths: pki.CertificatePaths,
    error: type[Exception],
    pattern: str,
    make: Callable[[pki.CertificatePaths], object],
) -> None:
    with pytest.raises(error, match=pattern):
        make(pki_paths)


def test_encrypted_server_key(tmp_path: Path) -> None:
    paths = pki.init_certificates(tmp_path, passphrase=b"open sesame")
    cert, key = paths.server_cert, paths.server_key
    # No password: a clear error, not OpenSSL's terminal prompt (which would hang).
    with pytest.raises(CertificateError, match="is encrypted: a password is needed"):
        tls.create_server_context(cert, key)
    with pytest.raises(CertificateError, match=r"wrong password$") as info:
        tls.create_server_context(cert, key, password="sesame")
    assert "sesame" not in str(info.value).replace(str(tmp_path), "")
    context = tls.create_server_context(cert, key, password=b"open sesame")
    assert ok(handshake(context, tls.create_client_context(paths.ca_cert)))
