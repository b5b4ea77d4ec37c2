"""What a request does: one connection's session, from its login to its last request.

``Session.handle(event)`` answers one request by yielding the events to send, in order
(a download yields its begin, its chunks and its end); the network layer encodes and
writes them, and is the only writer. Chunks of an upload do not come here: once
``UPLOAD_READY`` is sent, the network layer hands them to ``session.upload``
(``imgshare.server.upload.Upload``) itself.

The handlers live in two modules, one idea each: ``auth_requests`` (who you are) and
``image_requests`` (what you do with images). Every request type the protocol lets a
client send is in ``Session.HANDLERS``, handled or refused (UNSUPPORTED) explicitly; a
test checks the table against the protocol's state machine, so a new request type can
never be silently ignored. Requests other than the logins and REGISTER need a login,
checked here once; before each of them the session also re-checks that its user still
exists (user ids are never reused), that the token it logged in with is still live,
and that a password it logged in with has not been changed since: a removed user's,
a revoked token's and an old password's session ends at its next request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

from imgshare.errors import LocalProtocolError
from imgshare.logs import fields
from imgshare.protocol import ServerConnection
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode
from imgshare.server import auth_requests, image_requests
from imgshare.server.answers import Answers, error
from imgshare.server.caps import network_of
from imgshare.server.service import Service
from imgshare.server.upload import StoredUpload, Upload
from imgshare.store import User
from imgshare.store.catalog import now_ms

log = logging.getLogger(__name__)

Handler = Callable[["Session", ev.Event], Answers]


class Session:
    """Answers the requests of one connection (see the module docstring)."""

    def __init__(
        self,
        service: Service,
        conn: ServerConnection,
        peer: str,
        *,
        address: str | None = None,
        certificate_name: str | None = None,
        authenticated_user: User | None = None,
        on_login: Callable[[User], None] | None = None,
    ) -> None:
        """``certificate_name`` is the user a verified TLS client certificate names;
        ``on_login`` is told of a successful login before the client hears of it."""
        self.service = service
        self.conn = conn
        self.peer = peer
        self.address = address  # the client's IP address, for the login throttle
        self.network = network_of(address)  # what the audit trail and throttles keep
        self.certificate_name = certificate_name
        self.user = authenticated_user
        self.token_id: int | None = None  # the token this session logged in with
        self.login_method = ""  # "password", "token" or "certificate"
        self.logged_in_ms = 0  # when; a password change after it ends a password session
        self.upload: Upload | StoredUpload | None = None
        self.login_failures = 0
        self._on_login = on_login

    @property
    def me(self) -> User:
        """The logged-in user, for the handlers of requests that need a login."""
        if self.user is None:
            raise LocalProtocolError("a request that needs a login ran without one")
        return self.user

    def log_in(self, user: User, method: str, token_id: int | None = None) -> None:
        """From now on the session acts as ``user``, logged in by ``method`` (through
        ``token_id``, if any)."""
        self.user = user
        self.login_method = method
        self.logged_in_ms = now_ms()
        self.token_id = token_id
        if self._on_login is not None:
            self._on_login(user)

    def handle(self, event: ev.Event) -> Answers:
        """Answer one request: yield the events to send. Raises ``IntegrityError`` for a
        tampered upload and ``StorageError`` for a broken store (both fatal)."""
        handler = self.HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"{type(event).__name__} is not a request")
        if type(event) not in self.OPEN_REQUESTS:
            if self.user is None:
                yield error(ErrorCode.AUTH_REQUIRED, "log in first")
                return
            revoked = self._revoked(self.user)
            if revoked is not None:
                yield ev.Error(ErrorCode.AUTH_REQUIRED, revoked, fatal=True)
                return
        yield from handler(self, event)

    def close(self) -> None:
        """The connection ended: a half-received upload is kept for a resume if part
        of it is durable (docs/protocol.md, 7.10), else it leaves nothing behind."""
        upload, self.upload = self.upload, None
        if upload is not None:
            upload.suspend()

    def _revoked(self, user: User) -> str | None:
        """Why this session may no longer act (for the peer), or None."""
        catalog = self.service.catalog
        current = catalog.get_user(user.id)
        if current is None:
            reason = "this account no longer exists"
        elif self.token_id is not None and not catalog.token_alive(self.token_id, now_ms()):
            reason = "the token this session logged in with was revoked or has expired"
        elif self.login_method == "password" and current.password_changed_ms > self.logged_in_ms:
            reason = "the password of this account was changed: log in again"
        else:
            return None
        context = fields(event="session_revoked", peer=self.peer, user=user.name)
        log.warning("session ended: %s", reason, extra=context)
        self.close()
        return reason

    #: Requests that need no login.
    OPEN_REQUESTS: ClassVar[frozenset[type[ev.Event]]] = frozenset(
        {ev.Login, ev.TokenLogin, ev.CertLogin, ev.Register, ev.Info}
    )

    #: Every request a client may send, and what answers it.
    HANDLERS: ClassVar[dict[type[ev.Event], Handler]] = {
        ev.Login: auth_requests.login,
        ev.TokenLogin: auth_requests.token_login,
        ev.CertLogin: auth_requests.cert_login,
        ev.Register: auth_requests.register,
        ev.Info: auth_requests.info,
        ev.Passwd: auth_requests.passwd,
        ev.TokenCreate: auth_requests.token_create,
        ev.TokenList: auth_requests.token_list,
        ev.TokenRevoke: auth_requests.token_revoke,
        ev.UploadBegin: image_requests.upload_begin,
        ev.UploadResume: image_requests.upload_resume,
        ev.Thumbnail: image_requests.thumbnail,
        ev.UploadEnd: image_requests.upload_end,
        ev.Download: image_requests.download,
        ev.ListImages: image_requests.list_images,
        ev.ListPage: image_requests.list_page,
        ev.Share: image_requests.share,
        ev.Unshare: image_requests.unshare,
        ev.Shares: image_requests.shares,
        ev.Delete: image_requests.delete,
    }
