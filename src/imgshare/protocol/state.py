"""The conversation's state machine: one transition table, shared by both roles.

Everything that affects which message may come next lives here (as h11 keeps it in
``_state.py``). Both sides run the same table: a side applies it to what it sends
(an illegal step is a ``LocalProtocolError``) and to what it receives (an illegal step
is a ``RemoteProtocolError``). Only one request is outstanding at a time.
"""

from __future__ import annotations

import enum

from imgshare.protocol import events as ev


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    # handshake (records, handled by the connection itself)
    START = "start"
    WAIT_CLIENT_HELLO = "wait ClientHello"
    WAIT_SERVER_HELLO = "wait ServerHello"
    WAIT_SERVER_VERIFY = "wait ServerVerify"
    WAIT_SERVER_FINISHED = "wait ServerFinished"
    WAIT_CLIENT_FINISHED = "wait ClientFinished"
    # after the handshake (sealed messages)
    IDLE = "idle"
    AWAIT_LOGIN = "await login answer"
    AWAIT_OK = "await ok"
    AWAIT_LIST = "await list"
    AWAIT_PAGE = "await page"
    AWAIT_TOKEN = "await token"
    AWAIT_TOKENS = "await tokens"
    AWAIT_SHARES = "await shares"
    AWAIT_INFO = "await info"
    AWAIT_THUMBNAIL = "await thumbnail"
    AWAIT_UPLOAD_READY = "await upload ready"
    UPLOADING = "uploading"
    UPLOADED = "all chunks uploaded"
    AWAIT_RECEIPT = "await receipt"
    AWAIT_DOWNLOAD = "await download"
    DOWNLOADING = "downloading"
    DOWNLOADED = "all chunks downloaded"
    CLOSED = "closed"


C, S = Role.CLIENT, Role.SERVER

#: (state, sender, event type) -> next state. Not listed means not allowed.
TRANSITIONS: dict[tuple[State, Role, type[ev.Event]], State] = {
    (State.IDLE, C, ev.Login): State.AWAIT_LOGIN,
    (State.IDLE, C, ev.TokenLogin): State.AWAIT_LOGIN,
    (State.IDLE, C, ev.Register): State.AWAIT_OK,
    (State.IDLE, C, ev.Share): State.AWAIT_OK,
    (State.IDLE, C, ev.Delete): State.AWAIT_OK,
    (State.IDLE, C, ev.ListImages): State.AWAIT_LIST,
    (State.IDLE, C, ev.UploadBegin): State.AWAIT_UPLOAD_READY,
    (State.IDLE, C, ev.UploadResume): State.AWAIT_UPLOAD_READY,
    (State.IDLE, C, ev.Download): State.AWAIT_DOWNLOAD,
    (State.IDLE, C, ev.CertLogin): State.AWAIT_LOGIN,
    (State.IDLE, C, ev.Passwd): State.AWAIT_OK,
    (State.IDLE, C, ev.TokenCreate): State.AWAIT_TOKEN,
    (State.IDLE, C, ev.TokenList): State.AWAIT_TOKENS,
    (State.IDLE, C, ev.TokenRevoke): State.AWAIT_OK,
    (State.IDLE, C, ev.Unshare): State.AWAIT_OK,
    (State.IDLE, C, ev.Shares): State.AWAIT_SHARES,
    (State.IDLE, C, ev.ListPage): State.AWAIT_PAGE,
    (State.IDLE, C, ev.Info): State.AWAIT_INFO,
    (State.IDLE, C, ev.Thumbnail): State.AWAIT_THUMBNAIL,
    (State.AWAIT_LOGIN, S, ev.LoginOk): State.IDLE,
    (State.AWAIT_OK, S, ev.Ok): State.IDLE,
    (State.AWAIT_LIST, S, ev.ImageList): State.IDLE,
    (State.AWAIT_PAGE, S, ev.ImagePage): State.IDLE,
    (State.AWAIT_TOKEN, S, ev.Token): State.IDLE,
    (State.AWAIT_TOKENS, S, ev.Tokens): State.IDLE,
    (State.AWAIT_SHARES, S, ev.ShareList): State.IDLE,
    (State.AWAIT_INFO, S, ev.ServerInfo): State.IDLE,
    (State.AWAIT_THUMBNAIL, S, ev.ThumbnailData): State.IDLE,
    (State.AWAIT_UPLOAD_READY, S, ev.UploadReady): State.UPLOADING,
    (State.UPLOADING, C, ev.Chunk): State.UPLOADING,
    (State.UPLOADED, C, ev.UploadEnd): State.AWAIT_RECEIPT,
    (State.AWAIT_RECEIPT, S, ev.Receipt): State.IDLE,
    (State.AWAIT_DOWNLOAD, S, ev.DownloadBegin): State.DOWNLOADING,
    (State.DOWNLOADING, S, ev.Chunk): State.DOWNLOADING,
    (State.DOWNLOADED, S, ev.DownloadEnd): State.IDLE,
}

#: Where the last chunk of a stream leads instead (and an UPLOAD_READY of a resumed
#: upload whose chunks are all durable already: its ``next_chunk`` is the count).
AFTER_LAST_CHUNK = {State.UPLOADING: State.UPLOADED, State.DOWNLOADING: State.DOWNLOADED}

#: States in which the server answers a request; a non-fatal ERROR answers it too.
ANSWER_STATES = frozenset(
    {
        State.AWAIT_LOGIN,
        State.AWAIT_OK,
        State.AWAIT_LIST,
        State.AWAIT_PAGE,
        State.AWAIT_TOKEN,
        State.AWAIT_TOKENS,
        State.AWAIT_SHARES,
        State.AWAIT_INFO,
        State.AWAIT_THUMBNAIL,
        State.AWAIT_UPLOAD_READY,
        State.AWAIT_RECEIPT,
        State.AWAIT_DOWNLOAD,
    }
)


def next_state(state: State, sender: Role, event: ev.Event) -> State | None:
    """The state after ``sender`` sends ``event`` in ``state``, or None if not allowed."""
    if isinstance(event, ev.Error):
        if event.fatal:
            return State.CLOSED
        return State.IDLE if sender is S and state in ANSWER_STATES else None
    following = TRANSITIONS.get((state, sender, type(event)))
    if following is not None and isinstance(event, ev.Chunk) and event.last:
        return AFTER_LAST_CHUNK[state]
    return following
