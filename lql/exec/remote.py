"""USE REMOTE: point the session at a vindex served by ``lql serve`` (see docs/SERVER.md)."""

from __future__ import annotations

from .. import ast
from ..result import Result
from . import handler

USE_REMOTE_COLUMNS = ["url", "model", "family", "num_layers", "hidden_size", "vocab_size",
                      "dtype", "extract_level"]


@handler(ast.UseRemote)
def use_remote(session, stmt) -> Result:
    """Check the server (/health, /info), then send read-only statements there."""
    from ..remote.client import connect
    remote = connect(stmt.url)                 # raises before the session changes
    session.use_remote(remote)
    info = remote.info
    row = {"url": remote.url, **{k: info.get(k) for k in USE_REMOTE_COLUMNS[1:]}}
    level = str(info.get("extract_level") or "?").upper()
    msg = (f"Using remote vindex at {remote.url}: {info.get('model') or '?'} "
           f"({info.get('family') or '?'}), {info.get('num_layers')} layers, level {level}, "
           + (f"dtype {info.get('dtype')} — read-only: browse and inference statements run on "
              f"the server; edits need a local vindex (USE \"<path>\" leaves remote mode)"
              if getattr(remote, "protocol", "legacy") == "legacy" else
              f"dtype {info.get('dtype')} — {'LARQL' if remote.protocol == 'larql' else 'lql'} "
              f"server: statements run there, edits in this client's own session overlay "
              f"(X-Session-Id {remote.session_id}); the served files never change"))
    return Result.msg("USE REMOTE", msg, **row)
