"""Resume records: what a client keeps so that a cut-off upload can go on later.

An upload big enough for the server to make part of it durable before its end gets a
record here before its UPLOAD_BEGIN (docs/protocol.md, 7.10): the file's identity
(its path, size, modification time, device and inode), the SHA-256 of each of its
chunks (and of the list of them: a hash of the whole file) computed before anything
is sealed, the server and the user, and the upload's header and content key. When
the same file is sent again to the same server as the same user, the record says
which upload to resume; the digests prove the file is the same, chunk by chunk, so
that no content key and nonce ever seal two different plaintexts.

The digests are taken in the one pass that reads the file for sending: the upload
reads a batch of chunks ahead (``RECORD_EVERY`` bytes), hashes them, writes their
digests into the record, and only then seals and sends those very bytes. So every
chunk that ever left the client has its digest on disk, and a record may list fewer
digests than the upload has chunks (those after it were never sent). A resume
re-reads the recorded chunks and compares them before anything is sealed, and checks
every recorded chunk it sends again against its digest. A file that changes while it
is sent (its size or modification time) is refused before the last chunk goes.

Records are state, not settings, so they live in the user's state folder:
``$IMGSHARE_RESUME_DIR`` if set, else ``$XDG_STATE_HOME/imgshare/resume``, else
``~/.local/state/imgshare/resume`` (``default_folder``). A record holds a content key,
a secret as strong as the image (docs/security.md, "Resume records"): it is a file of
mode 0600 in a folder of mode 0700, written atomically, never followed through a
link, refused if others could read it, and deleted when the upload is stored, when the
server no longer has it, when the file changed, and when it is older than the server
keeps uploads (24 h).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgshare.client.session import ClientSession, OutgoingUpload, UploadResult
from imgshare.errors import ImgshareError, PeerError
from imgshare.protocol.constants import ErrorCode
from imgshare.protocol.stream import UploadHeader, new_upload
from imgshare.store.blobs import AtomicFile

log = logging.getLogger(__name__)

RECORD_VERSION = 1
FILE_MODE = 0o600
FOLDER_MODE = 0o700
#: Files smaller than this are not worth a record: a server makes an upload durable
#: only every 8 MiB by default, so a smaller one can never be resumed.
DEFAULT_MIN_SIZE = 8 * 1024 * 1024
#: A record older than this is dropped: the server keeps a cut-off upload 24 h.
DEFAULT_KEEP_FOR = 24 * 3600.0
#: Larger is not a record (digests of a 256 MiB file in 4 KiB chunks: 4 MiB of hex).
MAX_RECORD_BYTES = 8 * 1024 * 1024
_READ = 1024 * 1024
#: Bytes of chunks read, hashed and recorded ahead of the ones being sealed: the
#: record is written once per batch (an fsync), and the batch is held in memory.
RECORD_EVERY = 8 * 1024 * 1024
#: A record's temp file older than this was left by a process that died writing it.
_TEMP_AGE = 60.0


@dataclass(frozen=True)
class FileIdentity:
    """What says a file is still the one an upload began with, short of hashing it."""

    path: str  # absolute
    size: int
    mtime_ns: int
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path, info: os.stat_result) -> FileIdentity:
        return cls(str(path.absolute()), info.st_size, info.st_mtime_ns, info.st_dev, info.st_ino)


@dataclass(frozen=True)
class ResumeRecord:
    """One upload that may be resumed (see the module docstring)."""

    server: str  # SHA-256 of the server's certificate, hex
    user: str
    file: FileIdentity
    #: SHA-256 of each chunk sent or about to be: a prefix of the upload's chunks.
    digests: tuple[bytes, ...] = field(repr=False)
    header: bytes = field(repr=False)
    content_key: bytes = field(repr=False)
    created: float  # unix seconds

    @property
    def file_sha256(self) -> str:
        """SHA-256 over the chunk digests (of the whole file once all are there)."""
        return whole_digest(self.digests)

    @property
    def upload_header(self) -> UploadHeader:
        return UploadHeader.parse(self.header)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "server": self.server,
            "user": self.user,
            "file": vars(self.file),
            "sha256": self.file_sha256,
            "chunk_sha256": [d.hex() for d in self.digests],
            "header": self.header.hex(),
            "content_key": self.content_key.hex(),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResumeRecord:
        """Raises ``ValueError`` (or ``KeyError``, ``TypeError``) for a bad record."""
        if data.get("version") != RECORD_VERSION:
            raise ValueError("unknown resume record version")
        digests = tuple(bytes.fromhex(d) for d in data["chunk_sha256"])
        record = cls(
            server=str(data["server"]),
            user=str(data["user"]),
            file=FileIdentity(**data["file"]),
            digests=digests,
            header=bytes.fromhex(data["header"]),
            content_key=bytes.fromhex(data["content_key"]),
            created=float(data["created"]),
        )
        header = record.upload_header  # ValueError if malformed
        if (
            len(record.content_key) != 32
            or any(len(d) != 32 for d in digests)
            or len(digests) > header.chunk_count
            or record.file_sha256 != data["sha256"]
        ):
            raise ValueError("inconsistent resume record")
        return record


def default_folder(environ: Mapping[str, str] | None = None) -> Path:
    """Where a user's resume records live: ``$IMGSHARE_RESUME_DIR``, else
    ``$XDG_STATE_HOME/imgshare/resume`` (an absolute one only, as the XDG base
    directory rules say), else ``~/.local/state/imgshare/resume``."""
    env = os.environ if environ is None else environ
    explicit = env.get("IMGSHARE_RESUME_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "imgshare" / "resume"


def _same_digests(now: list[bytes], then: tuple[bytes, ...]) -> bool:
    """Digest lists compared in constant time (docs/design.md, decision 1)."""
    return hmac.compare_digest(b"".join(now), b"".join(then)) and len(now) == len(then)


def whole_digest(digests: tuple[bytes, ...] | list[bytes]) -> str:
    return hashlib.sha256(b"".join(digests)).hexdigest()


def chunk_digests(
    handle: io.BufferedIOBase, size: int, chunk_size: int, count: int | None = None
) -> list[bytes]:
    """SHA-256 of each ``chunk_size`` piece of the first ``size`` bytes of ``handle``
    (from its start; only the first ``count`` pieces if given). Raises
    ``ImgshareError`` if the file is shorter."""
    handle.seek(0)
    digests: list[bytes] = []
    buffer = memoryview(bytearray(max(1, min(chunk_size, _READ))))
    remaining = size
    while remaining and (count is None or len(digests) < count):
        digest = hashlib.sha256()
        left = min(chunk_size, remaining)
        while left:
            got = handle.readinto(buffer[: min(left, len(buffer))])
            if not got:
                raise ImgshareError("the file became shorter while it was read")
            digest.update(buffer[:got])
            left -= got
        digests.append(digest.digest())
        remaining -= min(chunk_size, remaining)
    handle.seek(0)
    return digests


class ResumeStore:
    """The resume records of one client (thread-safe: one file per record, each
    replaced atomically)."""

    def __init__(
        self,
        folder: Path,
        *,
        min_size: int = DEFAULT_MIN_SIZE,
        keep_for: float = DEFAULT_KEEP_FOR,
    ) -> None:
        """``min_size``: smaller files get no record (plain uploads)."""
        self.folder = Path(folder)
        self.min_size = min_size
        self.keep_for = keep_for

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None) -> ResumeStore:
        """The user's records, in ``default_folder(environ)``."""
        return cls(default_folder(environ))

    def _path(self, server: str, user: str, path: Path) -> Path:
        name = hashlib.sha256(f"{server}\0{user}\0{path.absolute()}".encode()).hexdigest()
        return self.folder / f"{name}.json"

    def load(self, server: str, user: str, path: Path) -> ResumeRecord | None:
        """The record of ``path`` for this server and user, if any and not expired (an
        expired or unreadable one is deleted)."""
        where = self._path(server, user, path)
        try:
            fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            raw = handle.read(MAX_RECORD_BYTES + 1)
        try:
            if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != os.getuid():
                raise ValueError("a resume record that others can read is not used")
            record = ResumeRecord.from_json(json.loads(raw))
            if record.server != server or record.user != user:
                raise ValueError("a resume record of another server or user")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("dropping resume record %s: %s", where, exc)
            self._unlink(where)
            return None
        if time.time() - record.created > self.keep_for:
            self._unlink(where)
            return None
        return record

    def save(self, record: ResumeRecord) -> Path:
        """Write (or replace) a record, mode 0600. Raises ``ImgshareError``."""
        where = self._path(record.server, record.user, Path(record.file.path))
        try:
            self.folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
            os.chmod(self.folder, FOLDER_MODE)
            with AtomicFile(where, self.folder, mode=FILE_MODE) as out:
                out.write(json.dumps(record.to_json(), sort_keys=True).encode())
                out.commit()
        except OSError as exc:
            raise ImgshareError(
                f"cannot write a resume record in {self.folder}: {exc.strerror or exc} (set "
                "IMGSHARE_RESUME_DIR to a folder you can write, or send without resuming)"
            ) from exc
        return where

    def delete(self, record: ResumeRecord) -> None:
        self._unlink(self._path(record.server, record.user, Path(record.file.path)))

    def records(self) -> Iterator[Path]:
        """The record files (for tests and a tidy-up); none if the folder cannot be
        read."""
        try:
            found = sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []
        except OSError:
            found = []
        yield from found

    def sweep(self) -> int:
        """Delete records older than ``keep_for``, and the temp files of records
        whose writing a killed process left (they may hold a key) once a minute old;
        return how many records."""
        removed = 0
        for where in self.records():
            with contextlib.suppress(OSError):
                if time.time() - where.stat().st_mtime > self.keep_for:
                    where.unlink()
                    removed += 1
        with contextlib.suppress(OSError):
            for temp in self.folder.glob("*.part"):
                with contextlib.suppress(OSError):
                    if time.time() - temp.stat().st_mtime > _TEMP_AGE:
                        temp.unlink()
        return removed

    @staticmethod
    def _unlink(where: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            where.unlink()


class RecordingSource(io.BufferedIOBase):
    """The file of an upload, read one whole chunk at a time. A chunk the record has a
    digest of is checked against it (a chunk that changed is never sealed:
    ``ImgshareError`` before the caller gets its bytes); the others are read a batch
    ahead, hashed, recorded (the record saved) and then handed out: the bytes sealed
    are the bytes hashed, and no chunk leaves before its digest is on disk."""

    def __init__(
        self,
        handle: io.BufferedIOBase,
        header: UploadHeader,
        store: ResumeStore,
        record: ResumeRecord,
        identity: FileIdentity | None,
    ) -> None:
        """``identity``: the file as it was when the upload began (None: ``handle``
        holds bytes in memory, which cannot change)."""
        super().__init__()
        self._handle = handle
        self._header = header
        self._store = store
        self.record = record
        self._identity = identity
        self._index = 0
        #: Chunks recorded before this attempt: each is checked as it is read again.
        self._checked = len(record.digests)
        self._ahead: collections.deque[bytearray] = collections.deque()
        self._batch = max(1, RECORD_EVERY // max(1, header.chunk_size))

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._handle.fileno()

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer).cast("B")
        index = self._index
        header = self._header
        if index >= header.chunk_count or len(view) != header.plaintext_length(index):
            raise ImgshareError("resumable uploads are read one whole chunk at a time")
        if index == header.chunk_count - 1:
            self._check_unchanged()  # before the last chunk, so before UPLOAD_END
        if index < self._checked:
            self._read_exactly(view)
            digest = hashlib.sha256(view).digest()
            if not hmac.compare_digest(digest, self.record.digests[index]):
                raise ImgshareError("the file changed while it was being sent: send it again")
        else:
            if not self._ahead:
                self._read_ahead(index)
            view[:] = self._ahead.popleft()
        self._index += 1
        return len(view)

    def _read_ahead(self, first: int) -> None:
        """Read, hash and record chunks ``first`` … (a batch), then save the record."""
        header = self._header
        digests = list(self.record.digests)
        for index in range(first, min(first + self._batch, header.chunk_count)):
            chunk = bytearray(header.plaintext_length(index))
            self._read_exactly(memoryview(chunk))
            digests.append(hashlib.sha256(chunk).digest())
            self._ahead.append(chunk)
        self.record = replace(self.record, digests=tuple(digests))
        self._store.save(self.record)

    def _read_exactly(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            count = self._handle.readinto(view[got:])
            if not count:
                raise ImgshareError("the file became shorter while it was being sent")
            got += count

    def _check_unchanged(self) -> None:
        if self._identity is None:
            return
        now = os.fstat(self._handle.fileno())
        if (now.st_size, now.st_mtime_ns) != (self._identity.size, self._identity.mtime_ns):
            raise ImgshareError("the file changed while it was being sent: send it again")

    def close(self) -> None:
        self._ahead.clear()
        self._handle.close()
        super().close()


class NotResumable(ImgshareError):
    """``must_resume`` was asked and the upload cannot go on: no record, a changed
    file, or the server has no such upload (NOT_FOUND)."""


def open_upload(
    session: ClientSession,
    path: Path,
    store: ResumeStore,
    name: str,
    chunk_size: int,
    *,
    sha256: bool = False,
    must_resume: bool = False,
    data: bytes | None = None,
) -> ResumableUpload:
    """Resume the upload of ``path`` recorded in ``store`` if the file is unchanged
    and the server still has it; else begin a new one (a new content key) and record
    it. With ``must_resume``, raise ``NotResumable`` instead of beginning a new one
    (after UPLOAD_END went out, a new upload could store a second copy). ``data``:
    send these bytes (the file with its metadata stripped), recorded under the file's
    identity; their digests decide, as a file's do. See
    ``ClientSession.begin_resumable_upload``. Raises ``ImgshareError`` for a file
    that cannot be read."""
    handle: io.BufferedIOBase
    try:
        if data is None:
            handle = path.open("rb")
            info = os.fstat(handle.fileno())
        else:
            info = path.stat()
            handle = io.BytesIO(data)
    except OSError as exc:
        raise ImgshareError(f"cannot read {path}: {exc.strerror}") from exc
    size = info.st_size if data is None else len(data)
    try:
        identity = FileIdentity.of(path, info)
        server = hashlib.sha256(session.server_certificate).hexdigest()
        user = session.username or ""
        record = store.load(server, user, path)
        next_chunk = 0
        if record is not None:
            header = record.upload_header
            same = record.file == identity and header.name == name and header.size == size
            if not same or not _same_digests(
                chunk_digests(handle, header.size, header.chunk_size, len(record.digests)),
                record.digests,
            ):
                store.delete(record)
                if must_resume:
                    raise NotResumable(f"{path} changed since its upload began")
                log.info("%s changed since its upload began: starting afresh", path)
                record = None
        if record is not None:
            try:
                next_chunk = session.resume_upload(record.upload_header, record.content_key)
            except PeerError as exc:
                if exc.code != ErrorCode.NOT_FOUND:
                    raise
                store.delete(record)
                if must_resume:
                    raise NotResumable(f"the server has no upload of {path} to resume") from exc
                log.info("the server no longer has the upload of %s: starting afresh", path)
                record = None
            else:
                # The server keeps it 24 h from now (it was worked on): so does the record.
                record = replace(record, created=time.time())
                store.save(record)
        if record is None:
            if must_resume:
                raise NotResumable(f"no resume record for {path}")
            header, content_key = new_upload(name, size, os.urandom, chunk_size)
            # No digests yet: each batch of chunks is recorded as it is read to be sent.
            record = ResumeRecord(
                server, user, identity, (), header.encode(), content_key, time.time()
            )
            store.save(record)  # before UPLOAD_BEGIN: the key is never lost while in use
            next_chunk = session.start_upload(header, content_key)
        header = record.upload_header
        handle.seek(0)
        source = RecordingSource(handle, header, store, record, identity if data is None else None)
    except BaseException:
        handle.close()
        raise
    upload = ResumableUpload(session, path, source, header, record.content_key, sha256=sha256)
    upload.attach(store, record, next_chunk)
    return upload


class ResumableUpload(OutgoingUpload):
    """An ``OutgoingUpload`` that began at ``next_chunk`` (the chunks before it are
    read and counted into the HMAC, not sent) and drops its resume record once the
    server stored it or refused it."""

    def attach(self, store: ResumeStore, record: ResumeRecord, next_chunk: int) -> None:
        self._store = store
        self._resume_record = record
        self.resumed_from = next_chunk
        for index in range(next_chunk):
            plaintext = self._plain[: self.header.plaintext_length(index)]
            self._source.readinto(plaintext)
            if self._digest is not None:
                self._digest.update(plaintext)
            self._sealer.skip(plaintext)
            self.sent += len(plaintext)
        self._next = next_chunk

    def finish(self) -> UploadResult:
        try:
            result: UploadResult = super().finish()
        except PeerError:  # refused: the server keeps nothing to resume
            self._store.delete(self._resume_record)
            raise
        self._store.delete(self._resume_record)
        return result
