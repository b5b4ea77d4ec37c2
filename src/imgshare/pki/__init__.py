"""The certificate generator: a private CA, server and client certificates (PEM).

One idea per module; import from ``imgshare.pki``, which re-exports the public names:

- ``issue``: keys and certificates made in memory, with the checks on hosts, client
  names and validity that come first (why a private CA, and its profile);
- ``files``: PEM files on disk (mode-0600 keys, ``force`` replaces atomically,
  passphrases) and whole certificate folders (``init_certificates``,
  ``create_*``, ``ensure_server_certificates``, ``load_*``);
- ``verify``: looking at certificates (``describe_certificate``,
  ``fingerprint_sha256``) and checking a server's certificate as a TLS client would.

Like every library module, the package logs and raises, never prints.
"""

from imgshare.pki.files import (
    CERT_MODE,
    KEY_MODE,
    CertificatePaths,
    KeyPairPaths,
    create_client_certificate,
    create_server_certificate,
    ensure_server_certificates,
    init_certificates,
    load_ca,
    load_certificate,
    load_private_key,
    read_passphrase_file,
)
from imgshare.pki.issue import (
    CLOCK_SKEW,
    DEFAULT_CA_DAYS,
    DEFAULT_CLIENT_DAYS,
    DEFAULT_HOSTS,
    DEFAULT_SERVER_DAYS,
    MAX_DAYS,
    RSA_KEY_SIZE,
    IssuedCertificate,
    KeyType,
    PrivateKey,
    check_client_name,
    generate_ca,
    generate_private_key,
    issue_client_certificate,
    issue_server_certificate,
    parse_host,
)
from imgshare.pki.verify import (
    CertificateInfo,
    describe_certificate,
    fingerprint_sha256,
    verify_server_certificate,
)

__all__ = [
    "CERT_MODE",
    "CLOCK_SKEW",
    "DEFAULT_CA_DAYS",
    "DEFAULT_CLIENT_DAYS",
    "DEFAULT_HOSTS",
    "DEFAULT_SERVER_DAYS",
    "KEY_MODE",
    "MAX_DAYS",
    "RSA_KEY_SIZE",
    "CertificateInfo",
    "CertificatePaths",
    "IssuedCertificate",
    "KeyPairPaths",
    "KeyType",
    "PrivateKey",
    "check_client_name",
    "create_client_certificate",
    "create_server_certificate",
    "describe_certificate",
    "ensure_server_certificates",
    "fingerprint_sha256",
    "generate_ca",
    "generate_private_key",
    "init_certificates",
    "issue_client_certificate",
    "issue_server_certificate",
    "load_ca",
    "load_certificate",
    "load_private_key",
    "parse_host",
    "read_passphrase_file",
    "verify_server_certificate",
]
