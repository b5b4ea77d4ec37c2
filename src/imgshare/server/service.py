"""What all sessions of one server process share: the store, accounts, policies, budgets.

``Service`` is built once per process (``imgshare.server.app``) and handed to every
``Session`` (``imgshare.server.session``), which answers one connection's requests.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from imgshare.logs import SummarizedLog
from imgshare.server import images
from imgshare.server.accounts import Accounts
from imgshare.server.audit import AuditTrail
from imgshare.server.credentials import Tokens
from imgshare.server.threads import ThreadReuse
from imgshare.server.thumbnails import ThumbnailMaker, Thumbnails
from imgshare.server.uploads import MemoryBudget
from imgshare.store import Catalog, ImageStore
from imgshare.store.lock import DataFolderLock

#: Image checks at once: a decode holds a whole frame in memory, and more decodes than
#: cores buy nothing.
CONCURRENT_VALIDATIONS = max(2, os.cpu_count() or 2)


@dataclass
class Service:
    """Everything the sessions of one server process share. Thread-safe: every part is."""

    store: ImageStore
    accounts: Accounts
    image_policy: images.ImagePolicy
    upload_memory: MemoryBudget
    max_login_failures: int = 5
    #: Who may make their own account: "closed", "invite" or "open".
    registration: str = "closed"
    #: Open registration: accounts one network may make per hour.
    registrations_per_address: int = 5
    validations: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(CONCURRENT_VALIDATIONS)
    )
    #: Events an attacker can cause, logged at a bounded rate (the server flushes it).
    events: SummarizedLog = field(
        default_factory=lambda: SummarizedLog(logging.getLogger("imgshare.server.network"))
    )
    #: Threads for the upload pipelines, reused from one upload to the next.
    pipeline_threads: ThreadReuse = field(
        default_factory=lambda: ThreadReuse(keep=30.0, name="upload-pipeline")
    )
    #: The data folder's lock, held until ``close``.
    lock: DataFolderLock | None = None
    _thumbnails: Thumbnails | None = field(default=None, init=False, repr=False)
    _maker: ThumbnailMaker | None = field(default=None, init=False, repr=False)

    @property
    def thumbnails(self) -> Thumbnails:
        """Makes and reads thumbnails (imgshare.server.thumbnails)."""
        if self._thumbnails is None:
            self._thumbnails = Thumbnails(self.store, self.image_policy, self.validations)
        return self._thumbnails

    def start_thumbnail_maker(self) -> None:
        """Make the thumbnails nobody has made yet, on a thread of this process's own
        that works only while the process receives no upload (idempotent)."""
        if self._maker is None and self.thumbnails.enabled:
            self._maker = ThumbnailMaker(self.thumbnails, lambda: self.upload_memory.used == 0)
            self._maker.start()

    #: Security events on their way to the catalog (``imgshare.server.audit``).
    audit: AuditTrail = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AuditTrail(self.store.catalog)

    @property
    def catalog(self) -> Catalog:
        return self.store.catalog

    @property
    def tokens(self) -> Tokens:
        return Tokens(self.store.catalog)

    def close(self) -> None:
        """Close the store and let the data folder go (idempotent)."""
        maker, self._maker = self._maker, None
        if maker is not None:
            maker.stop()
        self.pipeline_threads.close()
        self.audit.close()
        self.store.close()
        if self.lock is not None:
            self.lock.release()
