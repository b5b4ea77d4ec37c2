"""Hostile clients for the stress tests, many at once on one asyncio loop.

Run as a process of its own (``python attackers.py MODE ...``) so that its CPU and
its GIL are not the test's; it speaks real TLS and the real application handshake
through the same sans-IO ``ClientConnection`` the client uses, from many loopback
addresses (127.0.x.y all reach the server, each as another host).

Modes:

``squat``
    ``--count`` connections that complete both handshakes and then never log in,
    each reopened whenever the server ends it (``--retry`` seconds after a refusal).
``guess``
    ``--count`` connections that send wrong passwords for random user names as fast
    as the server answers, reconnecting whenever it closes one.
``stall``
    ``--count`` connections that log in (users ``u0``, ``u1``...) and start a 16 MiB
    upload, then send one byte every ``--every`` seconds.

It runs until SIGTERM (or ``--seconds``), then prints one JSON line of counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import ssl
import sys
from collections import Counter
from pathlib import Path

from imgshare import pki, tls
from imgshare.client import ca_verifier
from imgshare.errors import ProtocolError
from imgshare.protocol import NEED_DATA, ClientConnection
from imgshare.protocol import events as ev
from imgshare.protocol.keys import ServerVerifier
from imgshare.protocol.stream import new_upload

HOST = "127.0.0.1"
PASSWORD = "correct horse battery staple"


class Peer:
    """One TLS connection with the application handshake done."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: ClientConnection
    ) -> None:
        self.reader, self.writer, self.conn = reader, writer, conn

    @classmethod
    async def open(
        cls, port: int, context: ssl.SSLContext, verifier: ServerVerifier, source: str
    ) -> Peer:
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=context, server_hostname=HOST, local_addr=(source, 0)
        )
        peer = cls(reader, writer, ClientConnection(verifier))
        writer.write(peer.conn.initiate())
        event = await peer.receive()
        if not isinstance(event, ev.HandshakeComplete):
            raise ConnectionError(f"handshake: {event!r}")
        writer.write(peer.conn.data_to_send())
        return peer

    async def receive(self) -> ev.Event:
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, ev.Event)
                return event
            pending = self.conn.data_to_send()
            if pending:
                self.writer.write(pending)
            data = await self.reader.read(65536)
            self.conn.receive_data(data)
            if not data:
                return ev.ConnectionClosed()

    def send(self, event: ev.Event) -> None:
        self.writer.write(self.conn.send(event) + self.conn.data_to_send())

    async def ask(self, event: ev.Event, *, retry: bool = True) -> ev.Event:
        """Send a request and return its answer; with ``retry``, as long as the server
        says TRY_LATER, wait its hint and ask again (as a determined client would)."""
        while True:
            self.send(event)
            answer = await self.receive()
            if not (retry and isinstance(answer, ev.Error)) or answer.code.name != "TRY_LATER":
                return answer
            await asyncio.sleep(answer.retry_after_ms / 1000)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def sources(first: str, count: int) -> list[str]:
    """``count`` consecutive addresses from ``first``."""
    start = ipaddress.ip_address(first)
    return [str(start + i) for i in range(count)]


async def squat(
    port: int,
    context: ssl.SSLContext,
    verifier: ServerVerifier,
    source: str,
    retry: float,
    stats: Counter[str],
) -> None:
    while True:
        peer = None
        try:
            peer = await Peer.open(port, context, verifier, source)
            stats["handshakes"] += 1
            await peer.reader.read()  # hold until the server ends it
            stats["ended_by_server"] += 1
        except (OSError, ssl.SSLError, ConnectionError, ProtocolError, asyncio.IncompleteReadError):
            stats["failed"] += 1
            await asyncio.sleep(retry)
        finally:
            if peer is not None:
                peer.close()


async def guess(
    port: int, context: ssl.SSLContext, verifier: ServerVerifier, source: str, stats: Counter[str]
) -> None:
    while True:
        peer = None
        try:
            peer = await Peer.open(port, context, verifier, source)
            while True:
                peer.send(ev.Login(f"user{secrets.randbelow(10**6)}", "wrong password!"))
                answer = await peer.receive()
                if isinstance(answer, ev.Error):
                    stats[answer.code.name] += 1
                    if answer.fatal:
                        break
                else:
                    stats[type(answer).__name__] += 1
                    if isinstance(answer, ev.ConnectionClosed):
                        break
        except (OSError, ssl.SSLError, ConnectionError, ProtocolError):
            stats["failed"] += 1
            await asyncio.sleep(0.05)
        finally:
            if peer is not None:
                peer.close()


async def stall(
    port: int,
    context: ssl.SSLContext,
    verifier: ServerVerifier,
    source: str,
    user: str,
    every: float,
    stats: Counter[str],
) -> None:
    peer = None
    try:
        while True:  # log in, whatever it takes: reconnect when a login is cut off
            try:
                peer = await Peer.open(port, context, verifier, source)
                answer = await peer.ask(ev.Login(user, PASSWORD))
            except (OSError, ssl.SSLError, ConnectionError, ProtocolError) as exc:
                stats[f"login_{type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            if isinstance(answer, ev.LoginOk):
                break
            what = answer.code.name if isinstance(answer, ev.Error) else type(answer).__name__
            stats[f"login_{what}"] += 1
            peer.close()
        header, key = new_upload("stall.png", 16 << 20, os.urandom, 1 << 20)
        answer = await peer.ask(ev.UploadBegin(header, key), retry=False)
        if isinstance(answer, ev.Error):
            stats[f"begin_{answer.code.name}"] += 1
            return
        stats["uploading"] += 1
        record = peer.conn.send_chunk_header(ev.Chunk(0, bytes((1 << 20) + 16), False))
        for byte in record + bytes(1000):
            peer.writer.write(bytes([byte]))
            await peer.writer.drain()
            await asyncio.sleep(every)
            if peer.reader.at_eof():
                break
        stats["stall_ended"] += 1
    except (OSError, ssl.SSLError, ConnectionError, ProtocolError) as exc:
        stats[f"cut_{type(exc).__name__}"] += 1
    finally:
        if peer is not None:
            peer.close()


async def main(args: argparse.Namespace) -> Counter[str]:
    ca = Path(args.ca)
    context = tls.create_client_context(ca)
    verifier = ca_verifier([pki.load_certificate(ca)], HOST)
    stats: Counter[str] = Counter()
    addresses = sources(args.first_source, args.sources)
    tasks = []
    for i in range(args.count):
        source = addresses[i % len(addresses)]
        if args.mode == "squat":
            job = squat(args.port, context, verifier, source, args.retry, stats)
        elif args.mode == "guess":
            job = guess(args.port, context, verifier, source, stats)
        else:
            user = f"u{i % args.users}"
            job = stall(args.port, context, verifier, source, user, args.every, stats)
        tasks.append(asyncio.ensure_future(job))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let the first ones start
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    deadline = loop.time() + args.seconds
    while not stopping.done() and loop.time() < deadline:  # progress, once a second
        print(json.dumps(dict(stats)), flush=True)
        if all(task.done() for task in tasks):
            break
        await asyncio.wait([stopping], timeout=1.0)
    stopping.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["squat", "guess", "stall"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--first-source", default="127.0.1.1")
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--retry", type=float, default=0.05, help="squat: wait after a refusal")
    counts = asyncio.run(main(parser.parse_args()))
    print(json.dumps({"final": dict(counts)}), flush=True)
    sys.exit(0)
