"""The transport limit: a raw TLS 1.3 sender/receiver pair doing no app-layer work.

The receiver (``python -m bench.rawtls --port P --cert C --key K``) is its own
process; it accepts one connection at a time, reads an 8-byte length, then
``recv_into`` a reused 256 KiB buffer until it has that many bytes (discarding them)
and answers with the 8-byte count, so the sender's clock stops when every byte has
arrived. The sender (``send_file``) runs in the load generator and ``sendall``s the
file in 256 KiB pieces. Both use imgshare's own TLS context factory, so the TLS
settings (1.3 only, groups, certificate) are exactly our server's.
"""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import struct
import sys
import time
from pathlib import Path

from imgshare import tls

PIECE = 256 * 1024


def serve(port: int, cert: Path, key: Path) -> None:
    context = tls.create_server_context(cert, key)
    listener = socket.create_server(("127.0.0.1", port), backlog=16)
    print("ready", flush=True)
    buffer = bytearray(PIECE)
    while True:
        raw, _ = listener.accept()
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                header = _recv_exact(conn, 8)
                (expected,) = struct.unpack(">Q", header)
                received = 0
                while received < expected:
                    count = conn.recv_into(buffer, min(PIECE, expected - received))
                    if not count:
                        break
                    received += count
                conn.sendall(struct.pack(">Q", received))
        except (OSError, ssl.SSLError) as exc:
            print(f"rawtls receiver: {exc}", file=sys.stderr, flush=True)


def _recv_exact(conn: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise ConnectionError("peer closed early")
        data += more
    return data


def send_file(port: int, context: ssl.SSLContext, path: Path) -> dict[str, float]:
    """Send ``path`` to the receiver; time from after the TLS handshake to the ack."""
    size = path.stat().st_size
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn, path.open("rb") as src:
        buffer = bytearray(PIECE)
        view = memoryview(buffer)
        start = time.perf_counter()
        conn.sendall(struct.pack(">Q", size))
        while True:
            count = src.readinto(buffer)
            if not count:
                break
            conn.sendall(view[:count])
        (received,) = struct.unpack(">Q", _recv_exact(conn, 8))
        seconds = time.perf_counter() - start
    if received != size:
        raise ConnectionError(f"receiver got {received} of {size} bytes")
    return {"seconds": seconds, "bytes": float(size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(args.port, args.cert, args.key)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
