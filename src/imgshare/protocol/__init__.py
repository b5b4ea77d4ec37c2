"""The imgshare protocol, sans-IO: no sockets, ssl, asyncio, threading or sqlite3 here.

A test checks that this package imports none of them, so the same core runs under
any I/O model and is tested by feeding it bytes.
"""

from imgshare.protocol.connection import (
    NEED_DATA,
    ClientConnection,
    Limits,
    ServerConnection,
    encode_record,
)
from imgshare.protocol.constants import ErrorCode, Group, MessageType, RecordType
from imgshare.protocol.keys import PinnedCertificate, ServerVerifier
from imgshare.protocol.state import State
from imgshare.protocol.stream import StreamOpener, StreamSealer, UploadHeader, new_upload

__all__ = [
    "NEED_DATA",
    "ClientConnection",
    "ErrorCode",
    "Group",
    "Limits",
    "MessageType",
    "PinnedCertificate",
    "RecordType",
    "ServerConnection",
    "ServerVerifier",
    "State",
    "StreamOpener",
    "StreamSealer",
    "UploadHeader",
    "encode_record",
    "new_upload",
]
