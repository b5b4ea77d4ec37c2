"""Why a connection to an imgshare server failed, said so that a person can act on it.

``ClientSession.connect`` turns every failure of TCP, TLS and the application
handshake into a ``TransportError`` whose message names the cause and what to do:
connection refused, a port that never answers (``CONNECT_TIMEOUT``), a port that does
not speak TLS (an HTTP server, say), a server that wants a client certificate, and a
server certificate that does not verify: signed by a CA we do not trust (the system
bundle given by mistake, the server's own certificate given as the CA), expired or
not yet valid, or not naming the host we connected to. The command line says through
``Setup`` which files it used, so that the messages can name them.

After a failed verification, ``probe`` opens a second connection and runs a TLS
handshake that verifies nothing, sends no data and closes: it only learns the
certificate the server presents, to show its SHA-256 fingerprint, names, issuer and
validity. What it learns is never trusted.

``parse_server`` reads the address forms a person types: ``HOST``, ``HOST:PORT``,
``[IPv6]:PORT``, ``https://HOST:PORT`` and ``imgshare://HOST:PORT``.

Anything the server sent (names in its certificate) is escaped before it is shown.
Messages may span lines: the first says what failed, the others show the details.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import ssl
import textwrap
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from imgshare.errors import ConfigError, ProtocolError, SetupError, TransportError
from imgshare.protocol.constants import DEFAULT_PORT
from imgshare.safetext import escape

if TYPE_CHECKING:
    from cryptography import x509

#: Seconds for each step of getting connected (TCP, TLS, the imgshare handshake).
CONNECT_TIMEOUT = 10.0
#: How a person makes the client wait longer (named in the messages).
LONGER = "--connect-timeout SECONDS (IMGSHARE_CONNECT_TIMEOUT) waits longer"
#: More trust anchors than this is a bundle of public CAs, not an imgshare CA.
BUNDLE_SIZE = 10
_SCHEMES = ("https", "imgshare", "tls")


@dataclass(frozen=True)
class Setup:
    """What the client was told to use, so that a failure can name it (all optional:
    without it the messages describe what the TLS context holds)."""

    #: How the trusted CA was given, as a person would recognise it: "--ca FILE".
    ca_source: str | None = None
    #: That CA file, to look inside (and to suggest the ca.pem beside it).
    ca_file: Path | None = None
    #: Or the CA certificate(s) as PEM text (a profile keeps them so).
    ca_pem: str | None = None
    #: The client certificate presented for mutual TLS, if any.
    client_cert: str | None = None


# --- addresses ------------------------------------------------------------------------------


def server_text(host: str, port: int) -> str:
    """The HOST:PORT form of an address, brackets around IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_server(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` (or a bare IPv6 address), also written
    ``https://HOST:PORT`` or ``imgshare://HOST:PORT`` (a trailing ``/`` is fine) ->
    (host, port); the port is ``default_port`` when not given, in every form. Raises
    ``ConfigError`` saying what is wrong and what is expected."""
    given = text.strip()
    rest = given
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", given)
    if scheme:
        name = scheme.group(1).lower()
        if name not in _SCHEMES:
            raise ConfigError(
                f"--server {text!r}: imgshare always talks TLS, so {name}:// does not fit; "
                "give HOST:PORT (https://HOST:PORT and imgshare://HOST:PORT work too)"
            )
        rest = given[scheme.end() :].removesuffix("/")
        if "/" in rest or "?" in rest or "#" in rest:
            raise ConfigError(f"--server {text!r}: give the server as HOST:PORT, without a path")
    if "@" in rest:
        raise ConfigError(
            f"--server {text!r}: give the server as HOST:PORT; the user goes in --user"
        )
    host, port_text = _split_host_port(rest)
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(f"--server {text!r} is not HOST:PORT (for example localhost:8443)")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--server {text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return "", None
        host, after = text[1:close], text[close + 1 :]
        if after and not after.startswith(":"):
            return "", None
        return host, after[1:] if after else None
    if text.count(":") > 1:  # a bare IPv6 address: no port
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return "", None
        return text, None
    host, sep, port = text.partition(":")
    return host, port if sep else None


# --- failures before TLS --------------------------------------------------------------------


def connect_failed(exc: OSError, host: str, port: int, timeout: float) -> TransportError:
    """The TCP connection failed: say why in words, and what to check."""
    where = server_text(host, port)
    if isinstance(exc, socket.gaierror):
        return TransportError(
            f"cannot connect to {where}: the name {escape(host)} is not known "
            f"({exc.strerror}): check the host name in --server"
        )
    if isinstance(exc, TimeoutError):
        return TransportError(
            f"no answer from {where} within {timeout:g} s: the server is down or "
            f"unreachable, or a firewall drops the connection; check --server ({LONGER})"
        )
    if isinstance(exc, ConnectionRefusedError):
        return TransportError(
            f"cannot connect to {where}: connection refused, nothing listens on port "
            f"{port} there: is the server running, and is {port} its port? (imgshare "
            f"serves on {DEFAULT_PORT} unless told otherwise)"
        )
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return TransportError(
            f"cannot connect to {where}: {exc.strerror}: check the address and your network"
        )
    return TransportError(f"cannot connect to {where}: {exc.strerror or exc}")


# --- TLS failures ---------------------------------------------------------------------------

#: Alerts a server sends when it refuses our client certificate, or its lack.
_CLIENT_CERT_ALERT = re.compile(
    r"\b\w*ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|"
    r"CERTIFICATE_EXPIRED|CERTIFICATE_REVOKED|UNSUPPORTED_CERTIFICATE|ACCESS_DENIED)\b"
)
#: What OpenSSL says when the answer to our ClientHello is not TLS at all.
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST",
     "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "UNEXPECTED_RECORD"}
)  # fmt: skip
_NO_COMMON_VERSION = frozenset(
    {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"}
)
_NO_COMMON_SUITE = frozenset(
    {"SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER", "NO_SUITABLE_KEY_SHARE"}
)


def reason(exc: BaseException) -> str:
    """OpenSSL's short reason (``WRONG_VERSION_NUMBER``), else the OS's, else the text."""
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def tls_failed(
    exc: BaseException,
    host: str,
    port: int,
    context: ssl.SSLContext,
    setup: Setup | None,
    timeout: float,
) -> TransportError:
    """The TLS handshake failed: find out why (with a second, unverified look at the
    server when that helps) and say what to do."""
    where = server_text(host, port)
    setup = setup or Setup()
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SetupError(untrusted(exc, host, port, context, setup, timeout))
    if isinstance(exc, TimeoutError):
        return TransportError(
            f"{where} accepted the connection but did not answer the TLS handshake within "
            f"{timeout:g} s: is {port} the imgshare port? (imgshare serves TLS on "
            f"{DEFAULT_PORT} unless told otherwise) It may also be stuck or overloaded; "
            f"{LONGER}"
        )
    why = reason(exc)
    refused = client_certificate_refused(why, where, setup)
    if refused is not None:
        return refused
    if why in _NOT_TLS:
        return not_tls(where, port, probe(host, port, timeout).first_bytes)
    if why in _NO_COMMON_VERSION:
        return SetupError(
            f"{where} and this client have no TLS version in common ({why}): imgshare "
            "uses TLS 1.3 (or 1.2 where the server's tls_min allows it); is it an "
            "imgshare server?"
        )
    if why in _NO_COMMON_SUITE:
        return SetupError(
            f"{where} and this client agree on no TLS key exchange or cipher ({why}): "
            "is it an imgshare server?"
        )
    if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError)) or "EOF" in why:
        seen = probe(host, port, timeout)
        if seen.first_bytes and not _looks_like_tls(seen.first_bytes):
            return not_tls(where, port, seen.first_bytes)
        return TransportError(
            f"{where} closed the connection during the TLS handshake: it may want a "
            "client certificate (--client-cert and --client-key), accept no TLS version "
            f"we offer, or not be an imgshare server (is {port} its port?)"
        )
    return TransportError(f"TLS with {where} failed: {why}")


def client_certificate_refused(why: str, where: str, setup: Setup) -> TransportError | None:
    """The server's alert says it wants a client certificate, or not ours; else None."""
    alert = _CLIENT_CERT_ALERT.search(why)
    if alert is None:
        return None
    refused = f"{where} refused the TLS connection"
    if alert.group(1) == "CERTIFICATE_REQUIRED" or (
        setup.client_cert is None and alert.group(1) in ("BAD_CERTIFICATE", "ACCESS_DENIED")
    ):
        return SetupError(
            f"{refused}: it wants a client certificate (this server requires one): pass "
            "--client-cert FILE and --client-key FILE; its administrator issues them "
            "with `imgshare certs client NAME`"
        )
    which = f" {escape(setup.client_cert)}" if setup.client_cert else ""
    return SetupError(
        f"{refused}: it does not accept the client certificate{which} ({alert.group(0)}): "
        "it must be issued by the CA the server trusts for clients, and be valid now"
    )


def not_tls(where: str, port: int, first_bytes: bytes) -> TransportError:
    """The port answered our TLS hello with something else."""
    head = first_bytes.lstrip().lower()
    if head.startswith((b"http/", b"<!doctype html", b"<html", b"<head", b"<body")):
        what = "it answered in plain HTTP: a web server?"
    elif first_bytes.startswith(b"SSH-"):
        what = "it is an SSH server"
    elif first_bytes:
        what = f"its answer begins {_shown(first_bytes)}"
    else:
        what = "its answer was not a TLS handshake"
    return SetupError(
        f"{where} does not speak TLS ({what}): is {port} the imgshare port? "
        f"(imgshare serves TLS on {DEFAULT_PORT} unless told otherwise)"
    )


def _looks_like_tls(data: bytes) -> bool:
    return len(data) >= 3 and data[0] in (0x15, 0x16) and data[1] == 3


def _shown(data: bytes) -> str:
    text = data[:24].decode("ascii", "replace")
    shown = "".join(c if c.isprintable() and c != "\ufffd" else "." for c in text)
    return repr(shown)


def handshake_failed(
    exc: BaseException, host: str, port: int, setup: Setup | None, timeout: float
) -> BaseException:
    """TLS worked but the imgshare handshake did not: a timeout, a refusal of our
    client certificate (TLS 1.3 says so only now), or not an imgshare server."""
    where = server_text(host, port)
    why = reason(exc.__cause__ or exc)
    refused = client_certificate_refused(f"{exc} {why}", where, setup or Setup())
    if refused is not None:
        return refused
    if isinstance(exc.__cause__, TimeoutError):
        return TransportError(
            f"{where} completed TLS but did not answer the imgshare handshake within "
            f"{timeout:g} s: is it an imgshare server, and {port} its port? It may also "
            f"be overloaded; {LONGER}"
        )
    from imgshare.errors import HandshakeError, PeerError

    if isinstance(exc, ProtocolError) and not isinstance(exc, (HandshakeError, PeerError)):
        return SetupError(
            f"{where} speaks TLS but not the imgshare protocol ({exc}): is {port} the "
            f"imgshare port? (imgshare serves on {DEFAULT_PORT} unless told otherwise)"
        )
    return exc


# --- a certificate that did not verify ------------------------------------------------------


@dataclass
class Probe:
    """What a second, unverified connection learned: never to be trusted."""

    certificate: bytes | None = None  # the server's certificate (DER), if TLS got that far
    first_bytes: bytes = b""  # the start of its first answer
    error: str | None = None


def probe(host: str, port: int, timeout: float) -> Probe:
    """Connect again and run a TLS handshake that checks nothing, to see what the
    server presents. No application data is sent; the connection is closed at once.
    Only for showing (a fingerprint, what answered): never trust what it returns."""
    seen = Probe()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host.strip("[]") or None)
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            while True:
                try:
                    tls.do_handshake()
                    seen.certificate = tls.getpeercert(binary_form=True)
                    return seen
                except ssl.SSLWantReadError:
                    pending = outgoing.read()
                    if pending:
                        sock.sendall(pending)
                    sock.settimeout(max(0.05, deadline - time.monotonic()))
                    data = sock.recv(16384)
                    if not seen.first_bytes:
                        seen.first_bytes = data[:64]
                    if data:
                        incoming.write(data)
                    else:
                        incoming.write_eof()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        seen.error = reason(exc)
    return seen


def untrusted(
    exc: ssl.SSLCertVerificationError,
    host: str,
    port: int,
    context: ssl.SSLContext,
    setup: Setup,
    timeout: float,
) -> str:
    """Why the server's certificate did not verify, what it is, and how to trust it."""
    from cryptography import x509

    where = server_text(host, port)
    seen = probe(host, port, timeout)
    leaf = None
    if seen.certificate:
        try:
            leaf = x509.load_der_x509_certificate(seen.certificate)
        except ValueError:
            leaf = None
    anchors, unseen_non_ca = _anchors(context, setup)
    cause, advice = _cause(exc, host, port, leaf, anchors, unseen_non_ca, setup)
    lines = [f"cannot trust {where}: {cause}"]
    if leaf is not None:
        lines += _describe("the server's certificate (shown, not trusted)", leaf)
    else:
        lines.append(f"  (its certificate could not be fetched: {seen.error or 'no answer'})")
    signed = leaf is not None and any(_issued_by(leaf, ca) for ca in anchors if _is_ca(ca))
    if anchors and len(anchors) <= 3 and not signed:
        source = setup.ca_source or "the TLS context"
        for anchor in anchors:
            lines.append(
                f"  you trust ({escape(source)}): {_name(anchor.subject)}, SHA-256 "
                f"{_fingerprint(anchor)}"
            )
    if advice:
        lines += textwrap.wrap(
            advice,
            78,
            initial_indent="  ",
            subsequent_indent="  ",
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def _anchors(context: ssl.SSLContext, setup: Setup) -> tuple[list[x509.Certificate], int]:
    """The certificates we trusted, and how many of them (not CAs) we cannot see."""
    from cryptography import x509

    pem: bytes | None = None
    if setup.ca_pem is not None:
        pem = setup.ca_pem.encode("ascii", "replace")
    elif setup.ca_file is not None:
        try:
            pem = setup.ca_file.read_bytes()
        except OSError:
            pem = None
    with warnings.catch_warnings():  # old public CAs: negative serial numbers...
        warnings.simplefilter("ignore")
        if pem is not None:
            try:
                return x509.load_pem_x509_certificates(pem), 0
            except ValueError:
                pass
        found = []
        for der in context.get_ca_certs(binary_form=True):
            try:
                found.append(x509.load_der_x509_certificate(bytes(der)))
            except ValueError:
                continue
    stats = context.cert_store_stats()
    return found, max(0, stats.get("x509", 0) - stats.get("x509_ca", 0))


def _cause(
    exc: ssl.SSLCertVerificationError,
    host: str,
    port: int,
    leaf: x509.Certificate | None,
    anchors: list[x509.Certificate],
    unseen_non_ca: int,
    setup: Setup,
) -> tuple[str, str | None]:
    """The cause (one line) and, when there is more to say, what to do."""
    source = escape(setup.ca_source) if setup.ca_source else "the CA you gave"
    cas = [anchor for anchor in anchors if _is_ca(anchor)]
    not_cas = [anchor for anchor in anchors if not _is_ca(anchor)]
    signed = leaf is not None and any(_issued_by(leaf, ca) for ca in cas)
    instead = _ca_beside(setup) or "the ca.pem of the server's certificates"
    if leaf is not None and any(cert == leaf for cert in not_cas):
        return (
            f"{source} is the server's own certificate (server.pem), not the CA that signed it",
            f"Pass {instead} instead (the ca.pem beside server.pem: DATA/certs/ca.pem "
            "on the server).",
        )
    if (not_cas or unseen_non_ca) and not signed:
        what = _name(not_cas[0].subject) if not_cas else "one of them"
        return (
            f"{source} is not a CA certificate ({what} is a server or client certificate)",
            f"Pass {instead} (DATA/certs/ca.pem on the server).",
        )
    if len(cas) > BUNDLE_SIZE and not signed:
        given = f"{source} is" if setup.ca_source else "the certificates you trust are"
        return (
            f"{given} a bundle of {len(cas)} public CAs (the system's?), but an imgshare "
            "server's certificate comes from its own private CA",
            _HOW_TO_GET,
        )
    if leaf is not None and not signed:
        return ("its certificate is signed by a CA you do not trust", _HOW_TO_GET)
    now = datetime.now(UTC)
    clock = f"this computer's clock says {now:%Y-%m-%d %H:%M} UTC"
    if leaf is not None and now > leaf.not_valid_after_utc:
        return (
            f"its certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({clock})",
            "The server's administrator must renew it: `imgshare certs server --dir "
            "DATA/certs --force`, then restart the server (clients keep trusting its CA). "
            "If this computer's clock is wrong, set it right.",
        )
    if leaf is not None and now < leaf.not_valid_before_utc:
        return (
            f"its certificate is valid only from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}"
            f" UTC, and {clock}",
            "Set this computer's clock right (or the server's, if it issued the "
            "certificate with a wrong one).",
        )
    for ca in cas:
        if leaf is not None and _issued_by(leaf, ca) and now > ca.not_valid_after_utc:
            return (
                f"the CA certificate you trust ({source}) expired on "
                f"{ca.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                "Get the server's new ca.pem from its administrator.",
            )
    if leaf is not None and not _names_host(leaf, host):
        sans = _sans(leaf)
        use = f" (--server {server_text(sans[0], port)})" if sans else ""
        return (
            f"its certificate does not name {escape(host)}; it names "
            f"{', '.join(sans) or 'no host at all'}",
            f"Connect with one of those names{use}, or ask its administrator for a "
            f"certificate that names {escape(host)}: `imgshare certs server --dir DATA/certs "
            f"--host {escape(host)} --force`, then restart the server (clients keep "
            "trusting its CA).",
        )
    return (
        f"its certificate did not verify ({escape(exc.verify_message or reason(exc))})",
        _HOW_TO_GET,
    )


_HOW_TO_GET = (
    "To trust this server, get the ca.pem of its certificates from its administrator "
    "(DATA/certs/ca.pem on the server) and pass --ca ca.pem (`imgshare login --ca ca.pem` "
    "keeps it in your profile). First check that the SHA-256 above is the one `imgshare "
    "certs show --dir DATA/certs` prints for server.pem there."
)


def _ca_beside(setup: Setup) -> str | None:
    if setup.ca_file is None:
        return None
    candidate = setup.ca_file.parent / "ca.pem"
    if candidate != setup.ca_file and candidate.is_file():
        return escape(str(candidate))
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # any failure means "not this issuer"
        return False
    return True


def _sans(cert: x509.Certificate) -> list[str]:
    from cryptography import x509

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    shown: list[str] = []
    for name in names:
        if isinstance(name, (x509.DNSName, x509.IPAddress)):
            shown.append(escape(str(name.value)))
    return shown


def _names_host(cert: x509.Certificate, host: str) -> bool:
    from cryptography import x509

    host = host.strip("[]").lower().rstrip(".")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address in names.get_values_for_type(x509.IPAddress)
    for pattern in names.get_values_for_type(x509.DNSName):
        pattern = pattern.lower().rstrip(".")
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _name(name: x509.Name) -> str:
    return escape(name.rfc4514_string()) or "(no name)"


def _fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _describe(title: str, cert: x509.Certificate) -> list[str]:
    valid = (
        f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
        f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )
    return [
        f"  {title}:",
        f"    subject  {_name(cert.subject)}",
        f"    issuer   {_name(cert.issuer)}",
        f"    names    {', '.join(_sans(cert)) or '(none)'}",
        f"    valid    {valid}",
        f"    SHA-256  {_fingerprint(cert)}",
    ]
