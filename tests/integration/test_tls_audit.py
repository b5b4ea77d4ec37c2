"""An outside audit of the live server's TLS: sslyze against Mozilla's configurations.

The server is the real one (``make_server``), scanned over loopback by the ``sslyze``
command line, which speaks TLS through its own OpenSSL build (nassl), not ours:

- the default server (TLS 1.3 only) must be compliant with Mozilla's "modern"
  configuration;
- a server started with ``tls_min="1.2"`` must be compliant with "intermediate", and,
  as a control that the scan really looks at protocol versions, *not* with "modern".

sslyze is given the server's private CA (``--certinfo_ca_file``), so the certificate
checks (path validation above all) pass on their merits. It connects to 127.0.0.1 and
sends the name ``localhost`` (SNI), as the target ``localhost:PORT{127.0.0.1}`` says.
sslyze 6 does not match the certificate against that name itself, so the test checks
that the certificate it received names it.

sslyze lives in its own virtualenv, ``.venv-audit`` (``make audit-tools``, pinned in
``requirements-audit.txt``), because its dependency pins conflict with ours; the
environment variable ``IMGSHARE_SSLYZE`` may name another executable. A missing sslyze
fails these tests: a security check that skips itself is no check. Each scan takes
about a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import RunningServer

pytestmark = pytest.mark.audit

REPO = Path(__file__).resolve().parents[2]
SSLYZE_ENV = "IMGSHARE_SSLYZE"
DEFAULT_SSLYZE = REPO / ".venv-audit" / "bin" / "sslyze"
SCAN_TIMEOUT = 120.0  # seconds; a scan takes about 1 s here

#: The cipher suites tls.py offers. Mozilla's lists are wider; this pins down ours.
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
TLS12_SUITES = {  # the ECDSA half of tls.TLS12_CIPHERS: the first-start key is P-256
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
}
GROUPS = {"X25519", "secp256r1", "secp384r1"}  # tls.GROUPS, in OpenSSL's names
OLD_VERSIONS = ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1")


def sslyze_executable() -> Path:
    """The sslyze to run; fails (never skips) the test when it is not installed."""
    configured = os.environ.get(SSLYZE_ENV)
    path = Path(configured) if configured else DEFAULT_SSLYZE
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = f"{SSLYZE_ENV}={configured}" if configured else str(path)
        pytest.fail(
            f"sslyze is not installed ({where} is not an executable). Install it with "
            "`make audit-tools` (the virtualenv .venv-audit, pinned in "
            f"requirements-audit.txt), or point {SSLYZE_ENV} at an sslyze executable.",
            pytrace=False,
        )
    return path


@dataclass
class Scan:
    """One sslyze run: its exit code, its text report and its JSON results."""

    target: str
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any]  # server_scan_results[0]
    seconds: float

    def describe(self) -> str:
        return (
            f"sslyze {self.target} exited {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def verdict(self) -> str:
        """The compliance line for the target, e.g. ``localhost:1234: OK - Compliant.``"""
        host_port = self.target.split("{")[0]
        lines = [
            line.strip()
            for line in self.stdout.splitlines()
            if line.strip().startswith(f"{host_port}: ")
        ]
        assert len(lines) == 1, f"no single compliance line in the report\n{self.describe()}"
        return lines[0]

    def command(self, name: str) -> dict[str, Any]:
        """The result of one scan command, which must have completed."""
        attempt = self.result["scan_result"][name]
        assert attempt["status"] == "COMPLETED", f"{name}: {attempt}\n{self.describe()}"
        result: dict[str, Any] = attempt["result"]
        return result

    def accepted_suites(self, version: str) -> set[str]:
        result = self.command(f"{version}_cipher_suites")
        return {suite["cipher_suite"]["name"] for suite in result["accepted_cipher_suites"]}


def scan(server: RunningServer, profile: str, tmp_path: Path) -> Scan:
    """``sslyze --mozilla_config=PROFILE`` against ``server``, trusting its CA."""
    target = f"localhost:{server.port}{{127.0.0.1}}"
    json_out = tmp_path / f"sslyze-{profile}-{server.port}.json"
    command = [
        str(sslyze_executable()),
        f"--mozilla_config={profile}",
        f"--certinfo_ca_file={server.ca}",
        f"--json_out={json_out}",
        target,
    ]
    started = time.monotonic()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=SCAN_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    seconds = time.monotonic() - started
    assert json_out.exists(), f"sslyze wrote no JSON results: {done}"
    results = json.loads(json_out.read_text())["server_scan_results"]
    assert len(results) == 1, results
    found = Scan(target, done.returncode, done.stdout, done.stderr, results[0], seconds)
    assert found.result["connectivity_status"] == "COMPLETED", found.describe()
    assert found.result["scan_status"] == "COMPLETED", found.describe()
    return found


def check_certificate(found: Scan) -> None:
    """The chain validates against our CA only, and the leaf names the host we asked for."""
    info = found.command("certificate_info")
    assert info["hostname_used_for_server_name_indication"] == "localhost", found.describe()
    for deployment in info["certificate_deployments"]:
        trusted = {
            result["trust_store"]["name"]
            for result in deployment["path_validation_results"]
            if result["was_validation_successful"]
        }
        # The private CA is in no public store: only the supplied file may vouch for it.
        assert trusted == {"Supplied CA file"}, found.describe()
        assert deployment["verified_certificate_chain"], found.describe()
        names = deployment["received_certificate_chain"][0]["subject_alternative_name"]
        assert "localhost" in names["dns_names"], names
        assert "127.0.0.1" in names["ip_addresses"], names


def check_common(found: Scan) -> None:
    """What both configurations of ours share: no old protocol, our groups, TLS 1.3."""
    for version in OLD_VERSIONS:
        assert not found.command(f"{version}_cipher_suites")["is_tls_version_supported"], version
    assert found.accepted_suites("tls_1_3") == TLS13_SUITES, found.describe()
    curves = {curve["name"] for curve in found.command("elliptic_curves")["supported_curves"]}
    assert curves == GROUPS, found.describe()
    assert not found.command("tls_compression")["supports_compression"]


def test_default_server_is_mozilla_modern(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = make_server()
    found = scan(server, "modern", tmp_path)

    assert found.returncode == 0, found.describe()
    assert re.fullmatch(r"localhost:\d+: OK - Compliant\.", found.verdict()), found.describe()
    assert 'Mozilla\'s "modern" configuration' in found.stdout
    check_certificate(found)
    check_common(found)
    assert not found.command("tls_1_2_cipher_suites")["is_tls_version_supported"]


def test_tls12_server_is_mozilla_intermediate_and_not_modern(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = make_server(tls_min="1.2")
    found = scan(server, "intermediate", tmp_path)

    assert found.returncode == 0, found.describe()
    assert re.fullmatch(r"localhost:\d+: OK - Compliant\.", found.verdict()), found.describe()
    assert 'Mozilla\'s "intermediate" configuration' in found.stdout
    check_certificate(found)
    check_common(found)
    assert found.accepted_suites("tls_1_2") == TLS12_SUITES, found.describe()

    # The control: the same server is not "modern" (it speaks TLS 1.2), and sslyze says so.
    control = scan(server, "modern", tmp_path)
    assert control.returncode == 1, control.describe()
    assert re.fullmatch(r"localhost:\d+: FAILED - Not compliant\.", control.verdict())
    assert "tls_versions: TLS versions {'TLSv1.2'} are supported" in control.stdout
