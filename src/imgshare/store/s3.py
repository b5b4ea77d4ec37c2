"""Sealed objects in an S3-compatible bucket: ``S3BlobStore``, a ``BlobStore``.

Layout in the bucket::

    <prefix>/objects/<id[:2]>/<id>      sealed objects (ids: 32 lowercase hex digits)

An object is written as a multipart upload of ``PART_SIZE`` parts streamed as the
image arrives: the writer holds at most one part in memory, ``commit`` completes
the upload (an object of one part or less is a single PUT instead) and only then is
the object visible; ``abort`` aborts the upload. A crash leaves at most an
unfinished multipart upload, invisible to readers, which ``sweep_temp`` aborts once
it is older than its bound. "Acknowledged means durable" holds because S3 answers a
PUT or a CompleteMultipartUpload only once the object is stored.

Keys are made here from object ids checked against ``OBJECT_ID_RE`` and from the
operator's prefix, never from client input. The client library is botocore (the
core of boto3; bench/s3_clients.py and notes/s3-client-choice.md say why), imported
only when a store is made, so that ``S3Config`` works without it. Its errors become
``StorageError`` (``BlobNotFound`` for a missing object) naming the bucket, the
endpoint and what failed, never the secret key.

Thread-safe: botocore clients may be shared by threads, and nothing else here is
shared. Not fork-safe: make the store in the process that uses it (each worker).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import tempfile
import threading
import urllib.parse
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, Self

from imgshare.errors import ConfigError, StorageError, StorageUnavailable
from imgshare.store.blobs import OBJECT_ID_RE, BlobNotFound, BlobStore

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

#: Parts of a multipart upload (S3's minimum is 5 MiB, except for the last part).
PART_SIZE = 8 * 1024 * 1024
DEFAULT_REGION = "us-east-1"
#: Connections kept to the endpoint (a worker's connection threads share them).
DEFAULT_MAX_CONNECTIONS = 32
_READ_RESUMES = 2  # a GET cut off mid-stream is resumed with a Range request this often

# Bucket names as S3 allows them (3-63 characters; no dots: path-style only needs
# the simple kind, and a dotted name breaks TLS for virtual-hosted requests).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_PREFIX_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_UPLOAD = frozenset({"404", "NoSuchUpload"})
#: Answers that mean "not now" rather than "no" (and 5xx statuses).
_UNAVAILABLE = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})
_REFUSED = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
    }
)


@dataclass(frozen=True)
class S3Config:
    """Where the objects live and how to reach them.

    ``prefix`` is "" or slash-separated names without empty, "." or ".." parts;
    ``endpoint_url`` None means AWS itself. The secret key appears in no repr and
    no error.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION

    def __post_init__(self) -> None:
        """Raises ``ConfigError`` for a bad bucket name, prefix or endpoint."""
        if not _BUCKET_RE.fullmatch(self.bucket):
            raise ConfigError(
                f"invalid S3 bucket name {self.bucket!r}: 3-63 characters of a-z, 0-9 and '-'"
            )
        if self.prefix and not all(
            _PREFIX_PART_RE.fullmatch(part) and part not in (".", "..")
            for part in self.prefix.split("/")
        ):
            raise ConfigError(
                f"invalid S3 key prefix {self.prefix!r}: names of A-Z, a-z, 0-9, '.', '_' "
                "and '-' separated by single slashes"
            )
        if self.endpoint_url is not None:
            check_endpoint(self.endpoint_url)
        if not self.region or not re.fullmatch(r"[a-z0-9-]{1,40}", self.region):
            raise ConfigError(f"invalid S3 region {self.region!r}")

    @classmethod
    def from_url(
        cls,
        url: str,
        env: Mapping[str, str] | None = None,
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
    ) -> S3Config:
        """``s3://bucket/prefix`` plus the standard variables of ``env`` (default
        ``os.environ``): AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
        AWS_REGION (or AWS_DEFAULT_REGION; default us-east-1). Keyword arguments (from
        settings) win over the environment. Raises ``ConfigError``."""
        env = os.environ if env is None else env
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"object store URL must look like s3://bucket/prefix, not {url!r}")
        if "@" in parsed.netloc or ":" in parsed.netloc or parsed.query or parsed.fragment:
            raise ConfigError(
                "object store URL must be s3://bucket/prefix only: credentials go in "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the endpoint in AWS_ENDPOINT_URL"
            )
        return cls(
            bucket=parsed.netloc,
            prefix=parsed.path.strip("/"),
            endpoint_url=endpoint_url or env.get("AWS_ENDPOINT_URL") or None,
            access_key=access_key or env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=secret_key or env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=(
                region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
            ),
        )

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``, for messages."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key_prefix(self) -> str:
        """The prefix of every object key: ``<prefix>/objects/`` (or ``objects/``)."""
        return f"{self.prefix}/objects/" if self.prefix else "objects/"


def check_endpoint(url: str) -> None:
    """Raise ``ConfigError`` unless ``url`` is ``http(s)://host[:port]`` (no user,
    no path beyond "/", no query)."""
    parsed = urllib.parse.urlsplit(url)
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.username is not None
        or parsed.path not in ("", "/")
        or parsed.query
        or parsed.fragment
    ):
        raise ConfigError(f"S3 endpoint must be http(s)://host[:port], not {url!r}")
    try:
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"S3 endpoint has a bad port: {url!r}") from exc


def check_object_id(object_id: str) -> None:
    """Raises ``ValueError`` for a malformed id (as ``FileBlobStore.path_of``)."""
    if not isinstance(object_id, str) or not OBJECT_ID_RE.fullmatch(object_id):
        raise ValueError("object id must be 32 lowercase hex digits")


class S3BlobStore:
    """Sealed objects in a bucket (see the module docstring); thread-safe."""

    def __init__(
        self,
        config: S3Config,
        *,
        scratch_dir: Path | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
    ) -> None:
        """Make the client; no request is sent (``check`` sends one). ``scratch_dir``
        holds scratch files (default: the system's temp folder). Raises
        ``ConfigError`` if botocore is missing or the credentials are not set."""
        try:
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError
            from botocore.session import Session
        except ImportError as exc:
            raise ConfigError(
                "S3 object storage needs botocore: pip install 'imgshare[s3]'"
            ) from exc
        if not config.access_key or not config.secret_key:
            raise ConfigError(
                f"S3 object storage {config.url} needs credentials: set AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY (or the settings)"
            )
        self.config = config
        self.scratch_dir = scratch_dir
        self._prefix = config.key_prefix()
        self._client_errors: tuple[type[Exception], ...] = (ClientError,)
        self._errors: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
        client_config = Config(
            region_name=config.region,
            signature_version="s3v4",
            # Path style for S3-compatible servers (no DNS per bucket); AWS picks.
            s3={
                "addressing_style": "path" if config.endpoint_url else "auto",
                # No SHA-256 of every body for the signature: over https botocore already
                # leaves it out when a checksum header is there; this does the same
                # over http (an endpoint on a trusted network), where it cost about
                # 2.5 ms of CPU per 4 MB PUT (docs/performance.md, "Several nodes").
                # What still guards the body: the CRC32 checksum below, a signed header
                # that AWS and SeaweedFS check (radosgw 16 does not), against accidents;
                # against tampering, the sealed objects' own AES-GCM tags. The inbox
                # copy is plaintext: over http it is as open to the network as to the
                # bucket's operator (docs/security.md).
                "payload_signing_enabled": False,
            },
            # A checksum on every PUT and part, whatever AWS_REQUEST_CHECKSUM_CALCULATION
            # says (botocore's default already, made explicit).
            request_checksum_calculation="when_supported",
            # Bounded, so that a bucket that stops answering is an error a client hears
            # in seconds, not minutes: 3 attempts in all (botocore's "max_attempts"
            # counts retries: 3 meant 4), each given up after ``read_timeout`` of
            # silence (docs/operations.md, "When the database or the bucket is
            # unreachable").
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=max_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            tcp_keepalive=True,
        )
        # A session of our own: credentials and endpoint are exactly the config's.
        try:
            self._client: S3Client = Session().create_client(  # type: ignore[assignment]
                "s3",
                endpoint_url=config.endpoint_url,
                aws_access_key_id=config.access_key,
                aws_secret_access_key=config.secret_key,
                config=client_config,
            )
        except BotoCoreError as exc:  # e.g. AWS_PROFILE names no profile
            raise ConfigError(
                f"cannot set up the S3 client for {config.url}: {type(exc).__name__}"
            ) from exc

    def __repr__(self) -> str:
        return f"S3BlobStore({self.config.url!r}, endpoint={self._endpoint()!r})"

    def _endpoint(self) -> str:
        return self.config.endpoint_url or f"AWS {self.config.region}"

    def key_of(self, object_id: str) -> str:
        """The key of an object. Raises ``ValueError`` for a malformed id."""
        check_object_id(object_id)
        return f"{self._prefix}{object_id[:2]}/{object_id}"

    # --- errors -------------------------------------------------------------------

    def error(self, action: str, what: str, exc: Exception) -> StorageError:
        """A ``StorageError`` for a failed request: the bucket, the endpoint, what was
        being done and the S3 error code or the kind of failure (never the library's
        text, which could carry request details)."""
        where = f"S3 bucket {self.config.bucket!r} at {self._endpoint()}"
        if isinstance(exc, self._client_errors):
            code, status = error_code(exc)
            if code in _NOT_FOUND:
                return BlobNotFound(f"{where}: {what} not found")
            if code == "NoSuchBucket":
                return StorageError(f"{where}: cannot {action} {what}: the bucket does not exist")
            if code in _REFUSED:
                return StorageError(
                    f"{where}: cannot {action} {what}: the credentials were refused ({code}, "
                    f"HTTP {status}); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the "
                    "clock"
                )
            if status.startswith("5") or code in _UNAVAILABLE:
                return StorageUnavailable(
                    f"{where}: cannot {action} {what}: {code} (HTTP {status})"
                )
            return StorageError(f"{where}: cannot {action} {what}: {code} (HTTP {status})")
        # No answer at all: refused, timed out, cut off (botocore retried already).
        return StorageUnavailable(f"{where}: cannot {action} {what}: {type(exc).__name__}")

    def _fail(self, action: str, what: str, exc: Exception) -> NoReturn:
        raise self.error(action, what, exc) from exc

    # --- the BlobStore interface --------------------------------------------------

    def check(self) -> None:
        """One request that proves the bucket is there and the credentials work
        (for start-up). Raises ``StorageError``."""
        try:
            self._client.head_bucket(Bucket=self.config.bucket)
        except self._errors as exc:
            if isinstance(exc, self._client_errors) and error_code(exc)[0] in _NOT_FOUND:
                raise StorageError(
                    f"S3 bucket {self.config.bucket!r} at {self._endpoint()} does not exist"
                ) from exc
            self._fail("reach", "the bucket", exc)

    def create(self, object_id: str) -> S3BlobWriter:
        """A writer for a new object, invisible until committed. Raises ``ValueError``
        for a malformed id; sends nothing until a part is full or ``commit``."""
        return S3BlobWriter(self, self.key_of(object_id), object_id)

    def open(self, object_id: str) -> io.BufferedIOBase:
        """A streamed GET of the object (the caller closes it; ``readinto`` works).
        Raises ``BlobNotFound`` or ``StorageError``; reading raises ``StorageError``."""
        reader = _ObjectReader(self, self.key_of(object_id), object_id)
        return io.BufferedReader(reader, buffer_size=1024 * 1024)

    def _get(self, key: str, what: str, start: int = 0, etag: str | None = None) -> Any:
        """GetObject from byte ``start`` (of the version ``etag``); its response."""
        try:
            if start or etag:
                return self._client.get_object(
                    Bucket=self.config.bucket,
                    Key=key,
                    Range=f"bytes={start}-",
                    IfMatch=etag or "*",
                )
            return self._client.get_object(Bucket=self.config.bucket, Key=key)
        except self._errors as exc:
            self._fail("read", what, exc)

    def size(self, object_id: str) -> int:
        """Size in bytes. Raises ``BlobNotFound`` or ``StorageError``."""
        key = self.key_of(object_id)
        try:
            answer = self._client.head_object(Bucket=self.config.bucket, Key=key)
        except self._errors as exc:
            self._fail("stat", f"object {object_id}", exc)
        return int(answer["ContentLength"])

    def exists(self, object_id: str) -> bool:
        """Whether the object is stored. Raises ``StorageError``."""
        try:
            self.size(object_id)
        except BlobNotFound:
            return False
        return True

    def delete(self, object_id: str) -> bool:
        """Remove an object; return whether it existed (a HEAD first: S3's DELETE
        answers the same either way). Raises ``StorageError``."""
        key = self.key_of(object_id)
        existed = self.exists(object_id)
        try:
            self._client.delete_object(Bucket=self.config.bucket, Key=key)
        except self._errors as exc:
            self._fail("delete", f"object {object_id}", exc)
        return existed

    def iter_ids(self, before: float | None = None) -> Iterator[str]:
        """Ids of the stored objects (last modified before the unix time ``before``,
        if given), in key order; skips foreign keys. Raises ``StorageError``.

        On AWS an object completed from a multipart upload is dated when its upload
        began; an upload outlasting the sweep's bound would look old at once (no
        upload lasts an hour, the sweep's default bound).
        """
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=self._prefix):
                for entry in page.get("Contents", []):
                    object_id = self._id_of(entry.get("Key", ""))
                    if object_id is None:
                        continue
                    modified = entry.get("LastModified")
                    if before is None or (modified is not None and modified.timestamp() < before):
                        yield object_id
        except self._errors as exc:
            self._fail("list", f"objects under {self._prefix}", exc)

    def _id_of(self, key: str) -> str | None:
        rest = key[len(self._prefix) :] if key.startswith(self._prefix) else ""
        folder, _, name = rest.partition("/")
        if OBJECT_ID_RE.fullmatch(name) and folder == name[:2]:
            return name
        return None

    def sweep_temp(self, before: float | None = None, *, pid: int | None = None) -> int:
        """Abort unfinished multipart uploads under the prefix that began before the
        unix time ``before`` (all of them if None: only while no process of any node
        writes); return how many.

        ``pid`` alone aborts nothing and returns 0: S3 cannot tell which process
        began an upload (ListMultipartUploads returns no metadata, and the key is the
        object's), and aborting all of them would break the uploads of live workers
        and other nodes. A dead worker's uploads go at the next sweep by age.
        """
        if pid is not None and before is None:
            return 0
        return self.abort_uploads(self._prefix, before)

    def abort_uploads(self, prefix: str, before: float | None = None) -> int:
        """Abort the unfinished multipart uploads of keys under ``prefix`` that were
        last written before the unix time ``before`` (all of them if None); return
        how many. Raises ``StorageError``.

        "Last written" is the newest of the upload's start and its parts (ListParts),
        as a temp file's is its last write: an upload that began long ago but still
        sends parts (a big image on a slow link) is in progress, not left over."""
        paginator = self._client.get_paginator("list_multipart_uploads")
        aborted = 0
        try:
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    key, upload_id = upload.get("Key"), upload.get("UploadId")
                    initiated = upload.get("Initiated")
                    if key is None or upload_id is None:
                        continue
                    if before is not None and (
                        initiated is None
                        or initiated.timestamp() >= before
                        or self._last_part_time(key, upload_id) >= before
                    ):
                        continue
                    if self._abort_upload(key, upload_id):
                        aborted += 1
        except self._errors as exc:
            self._fail("list", f"multipart uploads under {prefix}", exc)
        if aborted:
            log.info("aborted %d unfinished multipart upload(s) in %s", aborted, self.config.url)
        return aborted

    # --- keys outside the objects area (the inbox in a bucket: imgshare.store.s3inbox) ---

    def writer(self, key: str, what: str) -> S3BlobWriter:
        """A writer for any key the caller made (never from client input)."""
        return S3BlobWriter(self, key, "", what=what)

    def list_keys(self, prefix: str, before: float | None = None) -> Iterator[str]:
        """Keys under ``prefix`` (last modified before the unix time ``before``, if
        given), in key order. Raises ``StorageError``."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    key, modified = entry.get("Key"), entry.get("LastModified")
                    if key is None:
                        continue
                    if before is None or (modified is not None and modified.timestamp() < before):
                        yield key
        except self._errors as exc:
            self._fail("list", f"keys under {prefix}", exc)

    def key_size(self, key: str, what: str) -> int | None:
        """The size of ``key``, or None if there is none. Raises ``StorageError``."""
        try:
            answer = self._client.head_object(Bucket=self.config.bucket, Key=key)
        except self._errors as exc:
            if isinstance(exc, self._client_errors) and error_code(exc)[0] in _NOT_FOUND:
                return None
            self._fail("stat", what, exc)
        return int(answer["ContentLength"])

    def delete_key(self, key: str, what: str) -> bool:
        """Remove ``key``; return whether it existed (a HEAD first). Raises
        ``StorageError``."""
        try:
            self._client.head_object(Bucket=self.config.bucket, Key=key)
            existed = True
        except self._errors as exc:
            if not (isinstance(exc, self._client_errors) and error_code(exc)[0] in _NOT_FOUND):
                self._fail("stat", what, exc)
            existed = False
        try:
            self._client.delete_object(Bucket=self.config.bucket, Key=key)
        except self._errors as exc:
            self._fail("delete", what, exc)
        return existed

    def _last_part_time(self, key: str, upload_id: str) -> float:
        """When the newest part of an upload was stored (unix time; 0 without parts,
        or when the upload is gone already). Raises the client's errors."""
        try:
            answer = self._client.list_parts(Bucket=self.config.bucket, Key=key, UploadId=upload_id)
        except self._client_errors as exc:
            if error_code(exc)[0] in _NO_UPLOAD:
                return 0.0
            raise
        times = [part["LastModified"].timestamp() for part in answer.get("Parts", [])]
        return max(times, default=0.0)

    def _abort_upload(self, key: str, upload_id: str) -> bool:
        """AbortMultipartUpload; False if it was gone already. Raises ``StorageError``."""
        try:
            self._client.abort_multipart_upload(
                Bucket=self.config.bucket, Key=key, UploadId=upload_id
            )
        except self._errors as exc:
            if isinstance(exc, self._client_errors) and error_code(exc)[0] in _NO_UPLOAD:
                return False
            self._fail("abort the multipart upload of", key, exc)
        return True

    def scratch_file(self) -> BinaryIO:
        """An anonymous private file (mode 0600, gone when closed) on this machine:
        scratch space is per node, never in the bucket. Raises ``StorageError``."""
        try:
            return tempfile.TemporaryFile(dir=self.scratch_dir)
        except OSError as exc:
            where = self.scratch_dir or tempfile.gettempdir()
            raise StorageError(
                f"cannot create a scratch file in {where}: {exc.strerror or exc}"
            ) from exc

    # --- what the writer uses -------------------------------------------------------

    def _put(self, key: str, body: bytes | bytearray, what: str) -> None:
        try:
            # botocore takes a bytearray as it is (its stubs say bytes): no copy.
            self._client.put_object(
                Bucket=self.config.bucket,
                Key=key,
                Body=body,  # type: ignore[arg-type]
                ChecksumCRC32=crc32_header(body),
            )
        except self._errors as exc:
            self._fail("store", what, exc)

    def _forget(self, key: str, what: str) -> None:
        """Best effort: delete ``key`` after a failed commit. Never raises."""
        try:
            self._client.delete_object(Bucket=self.config.bucket, Key=key)
        except self._errors as exc:
            log.warning("%s (left for the sweep)", self.error("remove", what, exc))

    def _begin_upload(self, key: str, what: str) -> str:
        try:
            answer = self._client.create_multipart_upload(Bucket=self.config.bucket, Key=key)
        except self._errors as exc:
            self._fail("begin the multipart upload of", what, exc)
        return answer["UploadId"]

    def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | bytearray, what: str
    ) -> str:
        try:
            answer = self._client.upload_part(
                Bucket=self.config.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,  # type: ignore[arg-type]
                ChecksumCRC32=crc32_header(body),
            )
        except self._errors as exc:
            self._fail(f"upload part {number} of", what, exc)
        return answer["ETag"]

    def _complete_upload(
        self, key: str, upload_id: str, parts: list[CompletedPartTypeDef], what: str
    ) -> None:
        try:
            self._client.complete_multipart_upload(
                Bucket=self.config.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except self._errors as exc:
            self._fail("complete the multipart upload of", what, exc)


def crc32_header(body: bytes | bytearray) -> str:
    """The ``x-amz-checksum-crc32`` value of ``body``: its CRC32, base64 of 4 bytes.

    Given with each PUT and part rather than left to botocore, which over https sends
    it in a trailer after an aws-chunked body (STREAMING-UNSIGNED-PAYLOAD-TRAILER),
    which S3 servers older than that trailer refuse: Ceph radosgw 16 answers every
    write "411 MissingContentLength" (docs/operations.md, "S3-compatible servers").
    As a header it is the same checksum, which every server takes, computed once
    (botocore computes none when one is given)."""
    return base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()


def error_code(exc: Exception) -> tuple[str, str]:
    """The S3 error code and HTTP status of a botocore ``ClientError``."""
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or "?")
    status = str((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or "?")
    return code, status


class S3BlobWriter:
    """One object on its way: a multipart upload, or a single PUT if it stays small.

    Holds at most ``PART_SIZE`` bytes: a full part is sent when more data comes (so
    that an object of exactly one part is a single PUT). One thread writes; ``abort``
    may come from any thread (it waits for a part in flight) and is idempotent, a
    no-op after a successful commit. A context manager that aborts.
    """

    def __init__(
        self, store: S3BlobStore, key: str, object_id: str, *, what: str | None = None
    ) -> None:
        self._store = store
        self.key = key
        self._what = what or f"object {object_id}"
        self._buffer = bytearray()  # grows to PART_SIZE, then is reused in place
        self._fill = 0
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._lock = threading.Lock()
        self._state = "open"
        self.bytes_written = 0

    def __repr__(self) -> str:
        return f"S3BlobWriter({self.key!r}, state={self._state})"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``, sending each full part. On failure the upload is aborted
        and ``StorageError`` raised."""
        view = memoryview(data).cast("B")
        with self._lock:
            self._require_open()
            try:
                while view:
                    if self._fill == PART_SIZE:
                        self._send_part()
                    take = min(PART_SIZE - self._fill, len(view))
                    end = self._fill + take
                    if end <= len(self._buffer):
                        self._buffer[self._fill : end] = view[:take]
                    else:  # still growing: the first part
                        self._buffer += view[:take]
                    self._fill = end
                    view = view[take:]
                    self.bytes_written += take
            except BaseException:
                self._abort_locked()
                raise

    def _send_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self._store._begin_upload(self.key, self._what)
        number = len(self._parts) + 1
        body = self._buffer if self._fill == len(self._buffer) else self._last_body()
        etag = self._store._upload_part(self.key, self._upload_id, number, body, self._what)
        self._parts.append({"ETag": etag, "PartNumber": number})
        self._fill = 0

    def _last_body(self) -> bytearray:
        """The buffer cut to what it holds (it is not reused after the last part)."""
        del self._buffer[self._fill :]
        return self._buffer

    def commit(self) -> None:
        """Make the object visible: complete the multipart upload (or PUT a small
        object). Raises ``StorageError``; after a failure nothing is left."""
        with self._lock:
            self._require_open()
            try:
                if self._upload_id is None:
                    self._store._put(self.key, self._last_body(), self._what)
                else:
                    self._send_part()  # the last one: never empty (see write)
                    self._store._complete_upload(self.key, self._upload_id, self._parts, self._what)
            except BaseException:
                self._abort_locked()
                # A PUT or completion that timed out may still have stored the object:
                # its key is this writer's alone (a random id), so remove it.
                self._store._forget(self.key, self._what)
                raise
            self._state = "committed"
            self._buffer = bytearray()

    def abort(self) -> None:
        """Give the object up: abort its multipart upload. Never raises; what cannot
        be aborted is logged and left for the sweep."""
        with self._lock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self._store._abort_upload(self.key, upload_id)
        except StorageError as exc:
            log.warning("cannot abort a multipart upload (left for the sweep): %s", exc)

    def _require_open(self) -> None:
        if self._state != "open":
            raise StorageError(f"writer for {self._what} is already {self._state}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class _ObjectReader(io.RawIOBase):
    """The raw stream under ``S3BlobStore.open``: one GET, resumed with a Range
    request (of the same version) if the connection breaks mid-object."""

    def __init__(self, store: S3BlobStore, key: str, object_id: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._what = f"object {object_id}"
        self._body: Any = None
        answer = store._get(key, self._what)
        self._body = answer["Body"]
        self._etag: str | None = answer.get("ETag")
        self._size = int(answer.get("ContentLength", 0))
        self._position = 0
        self._resumes = _READ_RESUMES

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Read up to ``len(buffer)`` bytes; 0 at the end. Raises ``StorageError``."""
        view = memoryview(buffer).cast("B")
        if not view or self._position >= self._size:
            return 0
        while True:
            try:
                chunk = self._body.read(len(view))
            except self._store._errors as exc:
                if self._resumes <= 0:
                    raise self._store.error("read", self._what, exc) from exc
                self._resumes -= 1
                self._resume()
                continue
            if not chunk:
                raise StorageError(
                    f"S3 bucket {self._store.config.bucket!r}: {self._what} ended after "
                    f"{self._position} of {self._size} bytes"
                )
            view[: len(chunk)] = chunk
            self._position += len(chunk)
            return len(chunk)

    def _resume(self) -> None:
        self._close_body()
        answer = self._store._get(self._key, self._what, self._position, self._etag)
        self._body = answer["Body"]

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # closing a dead connection may fail
                log.debug("closing an S3 response failed", exc_info=True)

    def close(self) -> None:
        if not self.closed:
            self._close_body()
        super().close()


if TYPE_CHECKING:  # mypy proves that the S3 store is a BlobStore

    def _is_a_blob_store(store: S3BlobStore) -> BlobStore:
        return store
