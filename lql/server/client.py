"""Moved to :mod:`lql.remote.client` (handlers must not import a surface); re-exported here."""

from ..remote.client import RemoteError, RemoteVindex, connect, normalize_url

__all__ = ["RemoteError", "RemoteVindex", "connect", "normalize_url"]
