"""Write the seed corpora: fuzz/corpus/records/ and fuzz/corpus/images/.

    .venv/bin/python fuzz/make_corpus.py

Records: for each side and each prefix of the recorded session, the peer's next honest
records (raw, fed whole and in 7-byte pieces) and, once keys exist, their plaintexts
as sealed-message inputs; plus the first flight to a fresh connection; plus, as
sealed-message inputs after the login, every message the session does not carry
(accounts, sharing, paging), so that every message parser has a valid seed. See
fuzz_records.py for the input format. Images: small valid images of every accepted
format made by Pillow, a few over the harness policy's limits, and hand-made oddities.

The seeds are committed (well under 200 KB); rerun this after a protocol or vector
change, and commit what changed. Each file is named after its SHA-1, as libFuzzer
names what it adds, so a rerun does not duplicate files.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_records as records  # noqa: E402

from imgshare.protocol import ErrorCode, RecordType, UploadHeader  # noqa: E402
from imgshare.protocol import events as ev  # noqa: E402
from imgshare.protocol.constants import ListScope, Registration  # noqa: E402
from imgshare.protocol.messages import encode_message  # noqa: E402
from protocol_helpers import open_record, other, record_type, sealed_count  # noqa: E402

CORPUS = HERE / "corpus"


def write(folder: Path, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


# --- records ----------------------------------------------------------------------------


def peer_run(side: str, steps: int) -> list[bytes]:
    """The peer's records from step ``steps`` on, up to this side's next own record."""
    found = []
    for step in records.SMALL["steps"][steps:]:
        if step["from"] == side:
            break
        found.append(bytes.fromhex(step["record"]))
    return found


def plaintexts(side: str, steps: int, run: list[bytes]) -> list[bytes]:
    """The messages inside the leading SEALED records of ``run``."""
    peer = other(side)
    key = bytes.fromhex(records.SMALL["keys"]["c2s" if peer == "client" else "s2c"])
    sequence = sealed_count(records.SMALL["steps"][:steps], peer)
    found = []
    for record in run:
        if record_type(record) != RecordType.SEALED:
            break
        found.append(open_record(key, sequence, record))
        sequence += 1
    return found


def record_seeds() -> list[bytes]:
    seeds = []
    for bit, side in enumerate(records.SIDES):
        for which, steps in enumerate(records.PREFIXES[side]):
            run = peer_run(side, steps)
            body = b"".join(run)
            seeds.append(bytes([bit | records.RAW_AFTER_PREFIX << 1, which, 0]) + body)
            seeds.append(bytes([bit | records.RAW_AFTER_PREFIX << 1 | 8, which, 7]) + body)
            messages = plaintexts(side, steps, run) if steps >= records.KEYED[side] else []
            if messages:
                framed = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
                seeds.append(bytes([bit | records.SEALED << 1, which, 0]) + framed)
        first = b"".join(peer_run(side, 0 if side == "server" else 1))
        seeds.append(bytes([bit | records.RAW_FRESH << 1, 0, 0]) + first)
    return seeds


#: Valid messages the seeds above do not carry: every request of accounts and sharing
#: (and LIST, DOWNLOAD, THUMBNAIL, UPLOAD_RESUME) for a logged-in server, and the
#: answers they miss for an idle client (which parses each, then refuses it in that
#: state). With the session's own, every sealed message type reaches its parser from
#: the seeds.
_ID = bytes(range(16))
_ENTRY = ev.ImageEntry(_ID, 5000, 1_700_000_000_000, bytes(32), "alice", "a.png")
REQUESTS: list[ev.Event] = [
    ev.ListImages(),
    ev.Download(_ID),  # the session downloads after the last server prefix
    ev.CertLogin(),
    ev.TokenLogin(b"imgshare-token-" + b"t" * 43),
    ev.Register("carol", "a password", b"imgshare-invite-i"),
    ev.Passwd("old password", "new password", True),
    ev.TokenCreate("laptop", 1 << 41),
    ev.TokenList(),
    ev.TokenRevoke(7),
    ev.Info(),
    ev.Share(_ID, "bob", 1 << 41),
    ev.Unshare(_ID, "bob"),
    ev.Shares(_ID),
    ev.Delete(_ID),
    ev.ListPage(ListScope.SHARED_WITH_ME, 1, _ID, 2),
    ev.Thumbnail(_ID),
    ev.UploadResume(UploadHeader(_ID, bytes(7), 4096, 9000, "a.png"), bytes(32)),
]
ANSWERS: list[ev.Event] = [
    ev.Ok(),
    ev.LoginOk("alice"),
    ev.UploadReady(0),
    ev.DownloadEnd(bytes(32)),
    ev.ImageList((_ENTRY,)),
    ev.Token(7, b"imgshare-token-" + b"s" * 43, 1 << 41),
    ev.Tokens((ev.TokenInfo(7, "laptop", 1, 0, 2),)),
    ev.ShareList(_ID, (ev.ShareInfo("bob", 1, 0),)),
    ev.ImagePage((_ENTRY, _ENTRY), True),
    ev.ServerInfo(1 << 28, 1_048_656, 10**8, Registration.INVITE, 5),
    ev.Error(ErrorCode.TRY_LATER, "busy", retry_after_ms=1500),
    ev.ThumbnailData(_ID, 256, 192, "image/jpeg", b"\xff\xd8\xff\xe0 a thumbnail"),
]
#: The recorded session's step after which both sides are idle and logged in.
LOGGED_IN = 7


def message_seeds() -> list[bytes]:
    seeds = []
    for bit, side in enumerate(records.SIDES):
        which = records.PREFIXES[side].index(LOGGED_IN)
        for event in REQUESTS if side == "server" else ANSWERS:
            message = encode_message(event)
            framed = len(message).to_bytes(2, "big") + message
            seeds.append(bytes([bit | records.SEALED << 1, which, 0]) + framed)
    return seeds


# --- images -----------------------------------------------------------------------------


def picture(mode: str, size: tuple[int, int], seed: int = 1) -> Image.Image:
    rng = random.Random(seed)
    width, height = size
    if mode == "P":
        return Image.frombytes("L", size, rng.randbytes(width * height)).convert("P")
    return Image.frombytes(mode, size, rng.randbytes(len(Image.new(mode, size).tobytes())))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def image_seeds() -> list[bytes]:
    rgb = picture("RGB", (16, 12))
    grey = picture("L", (16, 12))
    palette = picture("P", (12, 10))
    frames = [picture("P", (12, 10), n) for n in (2, 3)]
    png = encode(rgb, "PNG")
    return [
        encode(rgb, "JPEG", quality=80),
        encode(rgb, "JPEG", progressive=True),
        encode(grey, "JPEG", restart_marker_blocks=1),
        encode(picture("CMYK", (8, 8)), "JPEG"),
        png,
        encode(picture("P", (16, 12)), "PNG", interlace=1),
        encode(picture("RGBA", (9, 7)), "PNG"),
        encode(picture("I;16", (8, 8)), "PNG"),
        encode(palette, "GIF", save_all=True, append_images=frames, duration=20, loop=0),
        encode(rgb, "WEBP", quality=50),
        encode(rgb, "WEBP", lossless=True),
        encode(rgb, "WEBP", save_all=True, append_images=[picture("RGB", (16, 12), 4)]),
        encode(rgb, "TIFF"),
        encode(rgb, "TIFF", compression="tiff_lzw"),
        encode(rgb, "TIFF", compression="jpeg"),
        encode(grey, "TIFF", compression="packbits", save_all=True, append_images=[rgb]),
        encode(picture("1", (16, 12)), "TIFF", compression="group4"),
        encode(rgb, "BMP"),
        encode(picture("P", (16, 12)), "BMP"),
        encode(picture("1", (16, 12)), "BMP"),
        # Over the harness policy (1 Mpx a frame): a 1-bit PNG of 1100 x 1000 zeros.
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1100, 1000, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(1000 * 139), 9))
        + chunk(b"IEND", b""),
        png[: len(png) // 2],  # truncated
        b"GIF89a" + bytes(7),  # a header and nothing else
    ]


def main() -> None:
    for data in record_seeds() + message_seeds():
        write(CORPUS / "records", data)
    for data in image_seeds():
        write(CORPUS / "images", data)
    for folder in sorted(CORPUS.iterdir()):
        files = list(folder.iterdir())
        size = sum(f.stat().st_size for f in files)
        print(f"{folder.relative_to(HERE.parent)}: {len(files)} files, {size} bytes")


if __name__ == "__main__":
    main()
