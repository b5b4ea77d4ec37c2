"""Requests about images: upload, download, list, share, unshare, delete.

Each handler takes the session and its request and yields the answers. Who may see an
image is decided in one place, the catalog's ``readable_image``: its owner, and anyone
holding a live share. To anyone else an image answers NOT_FOUND, exactly like an id
that does not exist, so ids cannot be probed. Only the owner may share, unshare, list
the shares of or delete an image; for anyone else those answer NOT_FOUND too.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

from imgshare.errors import (
    ImageError,
    IntegrityError,
    QuotaError,
    StorageError,
    StorageUnavailable,
    TryLaterError,
)
from imgshare.logs import fields
from imgshare.protocol import events as ev
from imgshare.protocol.constants import (
    MAX_LIST_ENTRIES,
    MAX_PAGE_ENTRIES,
    TAG_SIZE,
    ErrorCode,
    ListScope,
)
from imgshare.server.answers import UNAVAILABLE, Answers, error, try_later
from imgshare.server.upload import StoredUpload, Upload, buffer_memory
from imgshare.store import ImageRecord, User
from imgshare.store.access import MAX_INTEGER
from imgshare.store.catalog import now_ms

if TYPE_CHECKING:
    from imgshare.protocol.stream import UploadHeader
    from imgshare.server.session import Session
    from imgshare.server.uploads import MemoryHold

log = logging.getLogger("imgshare.server.session")

_NOT_FOUND = "no such image"


def _entry(record: ImageRecord, owner: str) -> ev.ImageEntry:
    return ev.ImageEntry(
        bytes.fromhex(record.id), record.size, record.created_at, record.hmac, owner, record.name
    )


def _owned(session: Session, user: User, image_id: bytes) -> ImageRecord | None:
    """The image if ``user`` owns it (sharing, deleting: the owner's acts only)."""
    record = session.service.catalog.get_image(image_id.hex())
    return record if record is not None and record.owner_id == user.id else None


def upload_begin(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.UploadBegin)
    user = session.me
    service = session.service
    header = event.header
    try:
        memory = _hold_memory(session, header)
    except TryLaterError as exc:
        yield _deferred(session, exc)
        return
    try:
        pending = service.store.begin(user, header, event.content_key)
        session.upload = Upload(service, event, pending, memory)
    except TryLaterError as exc:
        memory.release()
        yield _deferred(session, exc)
        return
    except QuotaError as exc:
        memory.release()
        log.info("upload rejected", extra=fields(user=user.name, reason="quota"))
        yield error(ErrorCode.QUOTA_EXCEEDED, str(exc))
        return
    except StorageError as exc:
        memory.release()
        log.error("cannot start upload: %s", exc, extra=fields(user=user.name))
        yield error(ErrorCode.STORAGE_FAILED, "the server cannot store images right now")
        return
    yield ev.UploadReady(0)


def _hold_memory(session: Session, header: UploadHeader) -> MemoryHold:
    """The upload memory an upload of ``header`` may need at most, held for it.
    Raises ``TryLaterError`` when the process's budget is spent."""
    service = session.service
    return service.upload_memory.hold(
        buffer_memory(header.chunk_size, header.size) + service.store.writer_memory(header.size)
    )


def _deferred(session: Session, exc: TryLaterError) -> ev.Error:
    session.service.events.event(
        "upload_deferred", f"upload deferred: {exc}", session.peer, user=session.me.name
    )
    return try_later(exc)


def upload_resume(session: Session, event: ev.Event) -> Answers:
    """Take up an upload a broken connection cut off (docs/protocol.md, 7.10): the
    user's own, with exactly the header and content key it began with. Anything
    else, and an upload that expired or was dropped, is NOT_FOUND: the client then
    begins a new upload."""
    assert isinstance(event, ev.UploadResume)
    user = session.me
    service = session.service
    header = event.header
    try:
        memory = _hold_memory(session, header)
    except TryLaterError as exc:
        yield _deferred(session, exc)
        return
    try:
        pending = service.store.resume(user, header, event.content_key)
    except TryLaterError as exc:  # still held by a connection that has not noticed yet
        memory.release()
        yield _deferred(session, exc)
        return
    except StorageError as exc:
        memory.release()
        log.error("cannot resume an upload: %s", exc, extra=fields(user=user.name))
        yield error(ErrorCode.STORAGE_FAILED, "the server cannot store images right now")
        return
    if pending is None:
        memory.release()
        stored = _stored_upload(session, event)
        if stored is not None:  # finished while its client was gone: no second copy
            session.upload = stored
            chunks = event.header.chunk_count
            log.info("resumed upload was stored already", extra=fields(id=stored.record.id))
            yield ev.UploadReady(chunks)
            return
        yield error(ErrorCode.NOT_FOUND, "no such upload to resume: begin it again")
        return
    upload = Upload(service, event, pending, memory)
    try:
        next_chunk = upload.rebuild()
    except (IntegrityError, ImageError, StorageError) as exc:
        upload.abort()
        log.warning("upload cannot be resumed: %s", exc, extra=fields(user=user.name))
        yield error(ErrorCode.NOT_FOUND, "no such upload to resume: begin it again")
        return
    session.upload = upload
    log.info(
        "upload resumed",
        extra=fields(
            user=user.name, upload=header.upload_id.hex(), next_chunk=next_chunk, peer=session.peer
        ),
    )
    yield ev.UploadReady(next_chunk)


def _stored_upload(session: Session, event: ev.UploadResume) -> StoredUpload | None:
    """The user's image stored from exactly this header and content key, if any."""
    store = session.service.store
    header = event.header.encode()
    record = store.catalog.stored_upload(session.me.id, header)
    if record is None:
        return None
    try:
        key = store.key.unwrap(record.wrapped_key, bytes.fromhex(record.id))
    except StorageError:
        return None
    if not hmac.compare_digest(key, event.content_key):
        return None
    return StoredUpload(record, header, session.me)


def thumbnail(session: Session, event: ev.Event) -> Answers:
    """The thumbnail of an image the user may read (the same rule as DOWNLOAD), made
    now if it was not yet."""
    assert isinstance(event, ev.Thumbnail)
    user = session.me
    service = session.service
    record = service.catalog.readable_image(event.image_id.hex(), user.id, now_ms())
    thumb = service.thumbnails.get(record) if record is not None else None
    if thumb is None:
        message = _NOT_FOUND if record is None else "this image has no thumbnail"
        yield error(ErrorCode.NOT_FOUND, message)
        return
    yield ev.ThumbnailData(event.image_id, thumb.width, thumb.height, thumb.media_type, thumb.data)


def upload_end(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.UploadEnd)
    upload, session.upload = session.upload, None
    if upload is None:  # the state table makes this impossible
        raise StorageError("UPLOAD_END without an upload")
    context = fields(user=session.me.name, peer=session.peer, name=upload.header.name)
    try:
        body = upload.finish(event)
    except ImageError as exc:
        log.info("upload rejected: %s", exc, extra=context)
        yield error(ErrorCode.NOT_AN_IMAGE, str(exc))
        return
    except StorageError as exc:
        log.error("upload not stored: %s", exc, extra=context)
        failed = "the server could not store the image"
        if isinstance(exc, StorageUnavailable):  # the database or the bucket is down
            failed = f"{failed}: {UNAVAILABLE}"
        yield error(ErrorCode.STORAGE_FAILED, failed)
        return
    log.info(
        "image received",
        extra=fields(id=body.image_id.hex(), size=body.size, **context["fields"]),
    )
    yield session.conn.sign_receipt(body)


def download(session: Session, event: ev.Event) -> Answers:
    """An image of the user's or shared with them. The content key is unwrapped from
    storage and travels wrapped for this session, whoever uploaded the image; the
    HMAC sent is the uploader's, which the reader checks."""
    assert isinstance(event, ev.Download)
    user = session.me
    service = session.service
    record = service.catalog.readable_image(event.image_id.hex(), user.id, now_ms())
    if record is None:
        yield error(ErrorCode.NOT_FOUND, _NOT_FOUND)
        return
    opened = service.store.open(record)
    header = opened.header
    with opened.sealed as stored:
        yield ev.DownloadBegin(event.image_id, header, opened.content_key)
        # One buffer for every chunk: the network layer sends each chunk before it
        # asks for the next.
        buffer = memoryview(bytearray(min(header.chunk_size, header.size) + TAG_SIZE))
        for index in range(header.chunk_count):
            want = header.plaintext_length(index) + TAG_SIZE
            if stored.readinto(buffer[:want]) != want:
                raise StorageError(f"stored object {record.id} is truncated")
            yield ev.Chunk(index, buffer[:want], index == header.chunk_count - 1)
    yield ev.DownloadEnd(record.hmac)
    log.info("image sent", extra=fields(id=record.id, user=user.name, peer=session.peer))


def list_images(session: Session, event: ev.Event) -> Answers:
    """LIST: the newest ``MAX_LIST_ENTRIES`` of the user's own images (LIST_PAGE
    pages through all of them)."""
    user = session.me
    records = session.service.catalog.list_images(user.id)[-MAX_LIST_ENTRIES:]
    yield ev.ImageList(tuple(_entry(record, user.name) for record in records))


def list_page(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.ListPage)
    user = session.me
    page, more = session.service.catalog.list_page(
        user.id,
        shared=event.scope is ListScope.SHARED_WITH_ME,
        after=(min(event.after_ms, MAX_INTEGER), event.after_id.hex()),
        limit=event.limit,
        now=now_ms(),
    )
    yield ev.ImagePage(tuple(_entry(record, owner) for record, owner in page), more)


def share(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.Share)
    user = session.me
    catalog = session.service.catalog
    now = now_ms()
    record = _owned(session, user, event.image_id)
    if record is None:
        yield error(ErrorCode.NOT_FOUND, _NOT_FOUND)
        return
    if event.expires_ms and event.expires_ms <= now:
        yield error(ErrorCode.INVALID_ARGUMENT, "the share would have expired already")
        return
    if event.expires_ms > MAX_INTEGER:
        yield error(ErrorCode.INVALID_ARGUMENT, "the share's expiry is out of range")
        return
    target = catalog.get_user_by_name(event.username)
    if target is None:
        yield error(ErrorCode.NOT_FOUND, f"no user named {event.username!r}")
        return
    if target.id == user.id:
        yield error(ErrorCode.INVALID_ARGUMENT, "an image is always visible to its owner")
        return
    current = catalog.shares_of(record.id, now)
    if len(current) >= MAX_PAGE_ENTRIES and all(s.username != target.name for s in current):
        # SHARE_LIST carries at most MAX_PAGE_ENTRIES shares.
        yield error(ErrorCode.INVALID_ARGUMENT, "too many shares of this image: unshare some")
        return
    catalog.share_image(record.id, target.id, now, event.expires_ms)
    session.service.audit.record(
        "share_granted",
        user.name,
        session.network,
        now,
        image=record.id,
        to=target.name,
        expires_ms=event.expires_ms,
    )
    yield ev.Ok()


def unshare(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.Unshare)
    user = session.me
    catalog = session.service.catalog
    record = _owned(session, user, event.image_id)
    target = catalog.get_user_by_name(event.username) if record is not None else None
    if record is None or target is None or not catalog.unshare_image(record.id, target.id):
        yield error(ErrorCode.NOT_FOUND, "no such share")
        return
    session.service.audit.record(
        "share_revoked", user.name, session.network, now_ms(), image=record.id, to=target.name
    )
    yield ev.Ok()


def shares(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.Shares)
    user = session.me
    record = _owned(session, user, event.image_id)
    if record is None:
        yield error(ErrorCode.NOT_FOUND, _NOT_FOUND)
        return
    found = session.service.catalog.shares_of(record.id, now_ms())
    yield ev.ShareList(
        event.image_id,
        tuple(ev.ShareInfo(s.username, s.granted_ms, s.expires_ms) for s in found),
    )


def delete(session: Session, event: ev.Event) -> Answers:
    """Delete an image of the user's: its wrapped key goes first, in a durable commit,
    then its files; OK is sent only after that commit."""
    assert isinstance(event, ev.Delete)
    user = session.me
    service = session.service
    record = _owned(session, user, event.image_id)
    deleted = service.store.delete(record.id) if record is not None else None
    if deleted is None:
        yield error(ErrorCode.NOT_FOUND, _NOT_FOUND)
        return
    image = event.image_id.hex()
    service.audit.record("image_deleted", user.name, session.network, now_ms(), image=image)
    log.info("image deleted", extra=fields(id=image, user=user.name))
    yield ev.Ok()
