"""Which statements a served vindex answers, and where a remote-mode session runs each one.

One allowlist serves both ends: the server (:mod:`lql.server.httpd`) refuses any
statement outside it, and the client (:mod:`lql.remote.client`) forwards exactly
those statements, runs a few that need no vindex locally, and refuses the rest.
A statement class not named here is refused by default, so a new statement type
never becomes writable over HTTP by accident.
"""

from __future__ import annotations

from .. import ast

__all__ = ["READ_ONLY", "SESSION_WRITES", "server_refusal", "session_refusal", "route"]

#: statements the server runs: they read the served vindex and change nothing
READ_ONLY: tuple[type, ...] = (
    ast.Walk, ast.Describe, ast.Select, ast.ExplainWalk,
    ast.Infer, ast.ExplainInfer, ast.Trace,
    ast.ShowRelations, ast.ShowLayers, ast.ShowFeatures, ast.ShowEntities, ast.ShowPatches,
    ast.Stats, ast.Help,
)

#: statements a remote-mode client runs on its own side (they do not read the vindex)
_LOCAL: tuple[type, ...] = (ast.UseRemote, ast.SetChat, ast.Help, ast.ShowModels, ast.Extract)
#: statements that end remote mode (they pick a new local source)
_LEAVE: tuple[type, ...] = (ast.Use, ast.UseModel)


def server_refusal(stmt: ast.Statement) -> str | None:
    """Why the server will not run ``stmt`` (``None``: it will)."""
    if isinstance(stmt, ast.Pipe):
        return server_refusal(stmt.left) or server_refusal(stmt.right)
    if isinstance(stmt, ast.Stats) and stmt.path is not None:
        return ("STATS <path> reads a file on the server; this server answers STATS of the "
                "vindex it serves (STATS with no path)")
    if isinstance(stmt, ast.Trace) and stmt.save is not None:
        return "TRACE ... SAVE writes a file; this server runs TRACE without SAVE only"
    if isinstance(stmt, ast.Infer) and (stmt.steer or stmt.inject):
        return ("INFER ... STEER / INJECT reads vector and prompt files on the server; this "
                "server runs INFER without them")
    if getattr(stmt, "plot", None) is not None:
        return f"{stmt.keyword} ... PLOT writes a file; this server runs statements without PLOT"
    if isinstance(stmt, ast.SetChat):
        return ("SET CHAT changes server state; send the chat mode with each query "
                "(the \"chat\" field of POST /query) instead")
    if isinstance(stmt, ast.ShowModels):
        return "SHOW MODELS lists the server's files; this server answers for the vindex it serves"
    if isinstance(stmt, READ_ONLY):
        return None
    return (f"{stmt.keyword} is not allowed on a served vindex: the server is read-only "
            f"(it runs WALK, DESCRIBE, SELECT, EXPLAIN WALK, INFER, EXPLAIN INFER, TRACE "
            f"without SAVE, SHOW, STATS and HELP)")


def route(stmt: ast.Statement) -> str:
    """Where a session in remote mode runs ``stmt``.

    ``"local"`` (needs no vindex: USE REMOTE, SET CHAT, HELP, SHOW MODELS, EXTRACT,
    STATS <path>, COMPILE <path>, DIFF <path> <path>), ``"leave"`` (USE / USE MODEL:
    run locally and end remote mode), ``"remote"`` (send to the server) or
    ``"refuse"`` (it edits or writes from the vindex in use, which is remote).
    """
    if isinstance(stmt, _LEAVE):
        return "leave"
    if isinstance(stmt, _LOCAL):
        return "local"
    if isinstance(stmt, ast.Stats) and stmt.path is not None:
        return "local"
    if isinstance(stmt, ast.Compile) and stmt.source is not None:
        return "local"
    if isinstance(stmt, ast.Diff) and stmt.b is not None:
        return "local"
    if isinstance(stmt, ast.Trace) and stmt.save is not None:
        return "refuse"
    if isinstance(stmt, ast.Infer) and (stmt.steer or stmt.inject):
        return "refuse"
    if getattr(stmt, "plot", None) is not None:
        return "refuse"
    if isinstance(stmt, READ_ONLY):
        return "remote"
    return "refuse"


#: statements a client's own session (``X-Session-Id``) may run besides the read-only ones:
#: edits that land in that session's overlay. Patch files and paths stay server-side:
#: APPLY / REMOVE / SAVE PATCH go through the /v1/patches endpoints instead.
SESSION_WRITES: tuple[type, ...] = (ast.Insert, ast.Delete, ast.Update, ast.Rebalance)


def session_refusal(stmt: ast.Statement) -> str | None:
    """Why a client's own server session will not run ``stmt`` (``None``: it will)."""
    if isinstance(stmt, ast.Pipe):
        return session_refusal(stmt.left) or session_refusal(stmt.right)
    if isinstance(stmt, SESSION_WRITES):
        return None
    if isinstance(stmt, (ast.ApplyPatch, ast.RemovePatch, ast.SavePatch, ast.BeginPatch)):
        return (f"{stmt.keyword} names a file on the server; use POST /v1/patches/apply, "
                f"DELETE /v1/patches/{{name}} or POST /v1/patches/save instead")
    why = server_refusal(stmt)
    if why is not None and "read-only" in why:
        return (f"{stmt.keyword} is not allowed on a served vindex (a session runs WALK, "
                f"DESCRIBE, SELECT, INFER, EXPLAIN, TRACE without SAVE, SHOW, STATS, HELP, "
                f"and INSERT / DELETE / UPDATE / REBALANCE into its own overlay)")
    return why
