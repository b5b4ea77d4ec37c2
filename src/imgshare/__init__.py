"""imgshare: a self-hosted secure image sharing server."""

__version__ = "0.1.0"
