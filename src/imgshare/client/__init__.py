"""The Python client: ``ClientSession`` for one connection, with checked receipts."""

from imgshare.client.session import ClientSession, DownloadResult, UploadResult, ca_verifier

__all__ = ["ClientSession", "DownloadResult", "UploadResult", "ca_verifier"]
