"""Coverage-guided fuzzing of the protocol core: both connection state machines.

Run with atheris (see fuzz/README.md); ``test_one_input`` also runs without it, and
tests/unit/test_fuzz_harnesses.py feeds it the seed corpus on every test run.

The invariant (the same as tests/unit/test_protocol_fuzz.py, h11's fuzz invariant):
fed anything, in any pieces, ``receive_data``/``next_event`` raise nothing but
``RemoteProtocolError``; after it the connection is closed and has queued a report for
the peer; the receive buffer never holds more than the largest record allowed plus its
header plus the last piece fed. Anything else is raised as a crash.

An input is a 3-byte header, then a body:

- byte 0, bits: 0 = which side receives (0 client, 1 server); 1-2 = what the body is
  (0: raw bytes to a fresh connection; 1: raw bytes after an honest prefix of the
  recorded session; 2: a list of plaintext messages, each sealed with the peer's real
  key and sequence number, after the prefix, which reaches the message parsers and the
  state table past the AEAD; 3: as 1); 3 = end of stream after the body;
- byte 1: which prefix (an index into ``PREFIXES[side]``);
- byte 2: the size of the pieces the body is fed in (0: all at once);
- body; for kind 2, messages as (2-byte big-endian length, bytes).

The recorded session is tests/vectors/bad_cases.json's "x25519" session, replayed with
tests/protocol_helpers.py (so the harness needs a checkout, not just the package).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # protocol_helpers: the session replayer

from imgshare.errors import ProtocolError, RemoteProtocolError  # noqa: E402
from imgshare.protocol import (  # noqa: E402
    NEED_DATA,
    ClientConnection,
    Limits,
    ServerConnection,
    State,
)
from imgshare.protocol.constants import RECORD_HEADER_SIZE  # noqa: E402
from protocol_helpers import (  # noqa: E402
    HashRng,
    Replayer,
    make_connection,
    other,
    seal_record,
    sealed_count,
)

Connection = ClientConnection | ServerConnection
Json = dict[str, Any]

VECTORS = REPO / "tests" / "vectors" / "bad_cases.json"
SESSION: Json = json.loads(VECTORS.read_text())["sessions"]["x25519"]
#: Small limits, so that the fuzzer reaches them (as in test_protocol_fuzz.py).
LIMITS = Limits(
    max_record_size=4096 + 16 + 64, max_handshake_record_size=1024, max_image_size=1 << 16
)
SMALL: Json = {**SESSION, "limits": dataclasses.asdict(LIMITS)}
#: Steps of the recorded session after which each side is mid-conversation:
#: server 5 = handshake done, 7 = logged in, 8/9 = upload started / ready; client 13 =
#: receipt pending, 15-16 = downloading.
PREFIXES = {"server": [0, 4, 5, 7, 8, 9, 10, 12], "client": [1, 2, 3, 5, 7, 13, 15, 16]}
#: From this many steps on, the side has keys, so sealed messages reach it.
KEYED = {"client": 4, "server": 5}
SIDES = ("client", "server")
RAW_FRESH, RAW_AFTER_PREFIX, SEALED, _RAW_TOO = range(4)


class RecordedThenHashRng:
    """The recorded draws while their sizes match (the honest prefix replays exactly),
    then a deterministic stream: a fuzzed conversation may draw what the recording
    never did, and that is no bug."""

    def __init__(self, recorded: Iterable[bytes]) -> None:
        self._recorded = deque(recorded)
        self._fallback = HashRng("fuzz")

    def __call__(self, size: int) -> bytes:
        if self._recorded and len(self._recorded[0]) == size:
            return self._recorded.popleft()
        self._recorded.clear()
        return self._fallback(size)


def connection(side: str, steps: int) -> Connection:
    """A connection of ``side`` that has played the first ``steps`` steps honestly."""
    replayer = Replayer(SMALL, side)
    rng = RecordedThenHashRng(bytes.fromhex(d) for d in SMALL[f"{side}_rng"])
    replayer.conn = make_connection(SMALL, side, rng)  # the replayer's own rng is strict
    replayer.play(SMALL["steps"][:steps])
    replayer.conn.data_to_send()
    return replayer.conn


def fresh(side: str) -> Connection:
    conn = make_connection(SMALL, side, HashRng(f"fuzz {side}"))
    if isinstance(conn, ClientConnection):
        conn.initiate()
        conn.data_to_send()
    return conn


def seal_messages(side: str, steps: int, body: bytes) -> bytes:
    """Cut ``body`` into (2-byte length, message) and seal each as the peer would."""
    peer = other(side)
    key = bytes.fromhex(SMALL["keys"]["c2s" if peer == "client" else "s2c"])
    sequence = sealed_count(SMALL["steps"][:steps], peer)
    records, pos = [], 0
    while pos < len(body):
        length = int.from_bytes(body[pos : pos + 2], "big")
        message = body[pos + 2 : pos + 2 + length]
        pos += 2 + length
        records.append(seal_record(key, sequence, message))
        sequence += 1
    return b"".join(records)


def pieces(data: bytes, size: int, eof: bool) -> list[bytes]:
    cut = [data[i : i + size] for i in range(0, len(data), size)] if size else [data]
    return [piece for piece in cut if piece] + ([b""] if eof else [])


def buffer_bound(conn: Connection) -> int:
    limits = conn.limits
    return max(limits.max_record_size, limits.max_handshake_record_size) + RECORD_HEADER_SIZE


def feed(conn: Connection, chunks: list[bytes]) -> tuple[int, str]:
    """Feed ``chunks``, draining events after each; check the invariant.

    Returns (events received, how it ended: "error", "closed" or "open").
    """
    received = 0
    for chunk in chunks:
        conn.receive_data(chunk)
        if conn.buffered_bytes > buffer_bound(conn) + len(chunk):
            raise AssertionError(f"{conn.buffered_bytes} bytes buffered after {len(chunk)}")
        try:
            while conn.state is not State.CLOSED:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                received += 1
        except ProtocolError as exc:
            if not isinstance(exc, RemoteProtocolError):
                raise AssertionError(f"{exc!r} from received bytes") from exc
            if conn.state is not State.CLOSED:
                raise AssertionError(f"still {conn.state} after {exc!r}") from exc
            if not conn.data_to_send():
                raise AssertionError(f"no report queued for the peer after {exc!r}") from exc
            return received, "error"
        if conn.state is State.CLOSED:
            return received, "closed"
    return received, "open"


def run_one(data: bytes) -> tuple[int, str]:
    """One input (see the module docstring); returns ``feed``'s result."""
    if len(data) < 3:
        return 0, "short"
    mode, which, size, body = data[0], data[1], data[2], data[3:]
    side = SIDES[mode & 1]
    kind = (mode >> 1) & 3
    eof = bool(mode & 8)
    steps = PREFIXES[side][which % len(PREFIXES[side])]
    if kind == RAW_FRESH:
        conn = fresh(side)
    else:
        conn = connection(side, steps)
        if kind == SEALED and steps >= KEYED[side]:
            body = seal_messages(side, steps, body)
    return feed(conn, pieces(body, size, eof))


def test_one_input(data: bytes) -> None:
    run_one(data)


def main() -> None:
    import atheris  # type: ignore[import-untyped]  # fuzzing only: tests run without it

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
