"""``lql serve`` and ``USE REMOTE``: a read-only vindex over HTTP (standard library only).

* :mod:`lql.server.httpd`  — the server (``make_server``, ``VindexServer``);
* :mod:`lql.server.client` — the client a session uses in remote mode (``RemoteVindex``);
* :mod:`lql.server.policy` — which statements run where (one allowlist for both ends);
* :func:`cli_serve` — the ``lql serve PATH [--host H] [--port P]`` subcommand.

See docs/SERVER.md for the protocol.
"""

from __future__ import annotations

from .serve_cli import cli_serve

__all__ = ["cli_serve", "make_server", "serve"]


def make_server(*args, **kwargs):
    """See :func:`lql.server.httpd.make_server`."""
    from .httpd import make_server as _make
    return _make(*args, **kwargs)


def serve(path, host: str = "127.0.0.1", port: int = 8080, *, log=None):
    """A :class:`~lql.server.httpd.VindexServer` for the vindex at ``path`` (not yet running)."""
    from .serve_cli import open_server
    return open_server(path, host, port, log=log)
