"""The CPU floor of a big upload: what the mandatory work alone costs on this machine.

``python -m bench.floor [--mib 192]`` times each piece of work an imgshare upload
cannot skip, one at a time, single-threaded, in CPU seconds (best of 3):

- the client's file read (page cache -> buffer);
- HMAC-SHA256 of the plaintext, done by both sides (docs/design.md, decision 4);
- AES-GCM of the STREAM, done by both sides;
- TLS 1.3 over loopback with Python's ``ssl``, sender and receiver together;
- the server's two page-cache writes, sealed object and inbox copy (decision 5).

The sum, spread perfectly over the machine's cores, is the fastest an upload could
go with no overhead at all (no Python, no copies, no thread hand-offs), since client
and server share the cores. The TLS pair alone is what the raw TLS reference does.
Compare a measured upload with this floor, not only with nginx, which does TLS and
one write.
"""

from __future__ import annotations

import argparse
import hmac
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imgshare import tls

CHUNK = 1024 * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _best_cpu(work: Callable[[], None], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = _cpu()
        work()
        best = min(best, _cpu() - start)
    return best


def measure(folder: Path, size: int) -> dict[str, float]:
    """CPU seconds per piece of mandatory work for ``size`` bytes (a multiple of 1 MiB)."""
    chunks = size // CHUNK
    plain = memoryview(bytearray(os.urandom(CHUNK)))
    sealed = memoryview(bytearray(CHUNK + 16))
    source = folder / "source"
    with source.open("wb") as out:
        for _ in range(chunks):
            out.write(plain)

    def read() -> None:
        with source.open("rb", buffering=0) as handle:
            while handle.readinto(plain):
                pass

    def mac() -> None:
        digest = hmac.new(bytes(32), digestmod="sha256")
        for _ in range(chunks):
            digest.update(plain)

    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)

    def seal() -> None:
        for _ in range(chunks):
            aead.encrypt_into(nonce, plain, b"", sealed)

    def two_writes() -> None:
        for name in ("sealed", "inbox"):
            path = folder / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for _ in range(chunks):
                    os.write(fd, plain)
            finally:
                os.close(fd)
                path.unlink()

    figures = {
        "file read (client)": _best_cpu(read),
        "HMAC-SHA256 (client)": _best_cpu(mac),
        "HMAC-SHA256 (server)": _best_cpu(mac),
        "STREAM AES-GCM (client)": _best_cpu(seal),
        "STREAM AES-GCM (server)": _best_cpu(seal),
        "TLS 1.3 send + receive": _best_cpu(lambda: _tls_transfer(folder, chunks, plain)),
        "two page-cache writes (server)": _best_cpu(two_writes),
    }
    source.unlink()
    return figures


def _tls_transfer(folder: Path, chunks: int, data: memoryview) -> None:
    """Send ``chunks`` MiB through TLS to a receiving thread of this process."""
    certs = folder / "certs"
    if not (certs / "server.pem").exists():
        subprocess.run(
            [sys.executable, "-m", "imgshare", "certs", "init", "--dir", str(certs)],
            check=True,
            capture_output=True,
        )
    server_context = tls.create_server_context(certs / "server.pem", certs / "server.key")
    client_context = tls.create_client_context(certs / "ca.pem")
    expected = chunks * CHUNK
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def receive() -> None:
            raw, _ = listener.accept()
            with server_context.wrap_socket(raw, server_side=True) as conn:
                buffer, got = memoryview(bytearray(CHUNK)), 0
                while got < expected:
                    count = conn.recv_into(buffer)
                    if not count:
                        break
                    got += count
                conn.sendall(b"k")

        receiver = threading.Thread(target=receive)
        receiver.start()
        raw = socket.create_connection(listener.getsockname()[:2])
        with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            for _ in range(chunks):
                conn.sendall(data)
            conn.recv(1)
        receiver.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=192, help="payload in MiB (default 192)")
    args = parser.parse_args()
    size = args.mib * CHUNK
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="imgshare-floor-") as temp:
        figures = measure(Path(temp), size)
    cores = os.cpu_count() or 1
    total = sum(figures.values())
    print(f"CPU seconds per {size / 1e6:.0f} MB (best of 3, one thread each):")
    for name, seconds in figures.items():
        print(f"  {name:32} {seconds:6.3f} s  {seconds / size * 1e9:5.2f} ns/B")
    print(f"  {'total':32} {total:6.3f} s  {total / size * 1e9:5.2f} ns/B")
    tls_alone = figures["TLS 1.3 send + receive"]
    # curl + nginx must read the file, do the TLS and write one copy.
    nginx = (
        figures["file read (client)"] + tls_alone + figures["two page-cache writes (server)"] / 2
    )
    rates = {
        name: size / 1e6 / (cpu / cores)
        for name, cpu in (("imgshare", total), ("curl + nginx", nginx), ("raw TLS", tls_alone))
    }
    print(f"floor on {cores} cores: " + ", ".join(f"{n} {r:.0f} MB/s" for n, r in rates.items()))
    print(f"ceiling of the ratios: {nginx / total:.2f} x nginx, {tls_alone / total:.2f} x raw TLS")


if __name__ == "__main__":
    main()
