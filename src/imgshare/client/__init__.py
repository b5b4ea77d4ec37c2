"""The Python client: ``ClientSession`` for one connection, with checked receipts;
``profile`` for the saved login of the command line."""

from imgshare.client.session import (
    ClientSession,
    DownloadResult,
    NewToken,
    UploadResult,
    ca_verifier,
    image_id_bytes,
)

__all__ = [
    "ClientSession",
    "DownloadResult",
    "NewToken",
    "UploadResult",
    "ca_verifier",
    "image_id_bytes",
]
