"""Moved to :mod:`lql.remote.policy` (kept importable here)."""

from ..remote.policy import READ_ONLY, route, server_refusal

__all__ = ["READ_ONLY", "server_refusal", "route"]
