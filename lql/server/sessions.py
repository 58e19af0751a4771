"""Per-client overlays: LARQL's ``X-Session-Id`` sessions, with a TTL and a cap.

No header: the request runs in a fresh :class:`~lql.session.Session` over the shared
base vindex, read-only (the allowlist of :mod:`lql.remote.policy`). With a header:
the request runs in that client's own ``Session`` (created on first use, over the
same base vindex object, so nothing is copied), whose edits land in its own overlay
(:mod:`lql.edit.overlay`) — the base files never change and no other session sees
them. Inline patches are written into the session's folder by the CLI's own atomic
patch writer (:func:`lql.edit.patch.write_patch`) and applied with ``APPLY PATCH``.

One session's requests run one at a time (its ``lock``): its overlay is not safe to
read while another request writes it. Different sessions run concurrently.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..session import Session
from .guard import GuardError, safe_name

__all__ = ["ClientSession", "SessionStore"]


@dataclass
class ClientSession:
    """One ``X-Session-Id``'s state for one served model."""

    sid: str
    session: Session
    folder: Path                       # where its patch files live (server-owned)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    patches: dict[str, Path] = field(default_factory=dict)   # LARQL name -> applied file

    def touch(self) -> None:
        self.last_used = time.monotonic()


class SessionStore:
    """``(model id, session id) -> ClientSession`` with expiry after ``ttl_s`` idle seconds
    and at most ``cap`` live sessions (a new one past the cap is refused with 503)."""

    def __init__(self, root: Path | None = None, *, ttl_s: float = 1800.0, cap: int = 64):
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="lql-serve-"))
        self.ttl_s = ttl_s
        self.cap = cap
        self._items: dict[tuple[str, str], ClientSession] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, model_id: str, sid: str, base: Any, *, create: bool = True
            ) -> ClientSession | None:
        """The session ``sid`` of ``model_id`` (made over vindex ``base`` when new)."""
        if not safe_name(sid):
            raise GuardError(400, "X-Session-Id must be 1-128 characters of letters, digits, "
                                  "'.', '_' or '-'")
        with self._lock:
            self._expire_locked()
            cs = self._items.get((model_id, sid))
            if cs is None and create:
                if len(self._items) >= self.cap:
                    raise GuardError(503, f"the server holds its maximum of {self.cap} sessions; "
                                          f"retry later or reuse a session id")
                folder = self.root / model_id / sid
                folder.mkdir(parents=True, exist_ok=True)
                s = Session(cwd=folder)
                s.use_vindex(base)
                cs = ClientSession(sid, s, folder)
                self._items[(model_id, sid)] = cs
            if cs is not None:
                cs.touch()
            return cs

    def drop(self, model_id: str, sid: str) -> bool:
        with self._lock:
            cs = self._items.pop((model_id, sid), None)
        if cs is not None:
            shutil.rmtree(cs.folder, ignore_errors=True)
        return cs is not None

    def expire(self) -> int:
        with self._lock:
            return self._expire_locked()

    def _expire_locked(self) -> int:
        now = time.monotonic()
        old = [k for k, cs in self._items.items()
               if now - cs.last_used > self.ttl_s and not cs.lock.locked()]
        for k in old:
            cs = self._items.pop(k)
            shutil.rmtree(cs.folder, ignore_errors=True)
        return len(old)

    def close(self) -> None:
        with self._lock:
            self._items.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
