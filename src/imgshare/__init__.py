"""imgshare: a self-hosted secure image sharing server.

``imgshare.Client`` is the Python API (``imgshare.client.api``, docs/client.md). It is
imported on first use, not here: ``import imgshare`` stays light, so that the command
line, which imports this package first, starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from imgshare.client.api import Client, Progress, ProgressCallback, SendPlan, plan_send
    from imgshare.client.session import DownloadResult, OutgoingUpload, UploadResult
    from imgshare.errors import ImgshareError, PeerError

#: What ``from imgshare import X`` finds, and in which module it lives.
_LAZY = {
    "Client": "imgshare.client.api",
    "Progress": "imgshare.client.api",
    "ProgressCallback": "imgshare.client.api",
    "SendPlan": "imgshare.client.api",
    "plan_send": "imgshare.client.api",
    "DownloadResult": "imgshare.client.session",
    "OutgoingUpload": "imgshare.client.session",
    "UploadResult": "imgshare.client.session",
    "ImgshareError": "imgshare.errors",
    "PeerError": "imgshare.errors",
}

__all__ = [
    "Client",
    "DownloadResult",
    "ImgshareError",
    "OutgoingUpload",
    "PeerError",
    "Progress",
    "ProgressCallback",
    "SendPlan",
    "UploadResult",
    "__version__",
    "plan_send",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imgshare' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
