"""``lql serve PATH [--host H] [--port P]``: serve one vindex until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import signal
import sys

from ..errors import LqlError

__all__ = ["cli_serve", "open_server"]


def open_server(path, host: str = "127.0.0.1", port: int = 8080, *, log=sys.stderr):
    """Open the vindex at ``path`` in a fresh session and bind a server for it (port 0: any)."""
    from ..session import Session
    from .httpd import make_server
    session = Session()
    session.query(f"USE {_quote(str(path))}")      # the USE handler's checks and messages
    try:
        return make_server(session, host, port, log=log)
    except OSError as exc:
        raise LqlError(f"lql serve: cannot listen on {host}:{port}: "
                       f"{exc.strerror or exc}") from None


def _quote(text: str) -> str:
    from ..ast import quote
    return quote(text)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def cli_serve(args) -> int:
    """Entry point of ``lql serve`` (``args.path``, ``args.host``, ``args.port``)."""
    if not args.path:
        sys.stderr.write("usage: lql serve PATH [--host H] [--port P]\n"
                         "error: lql serve needs the PATH of a vindex to serve\n")
        return 2
    server = open_server(args.path, args.host, args.port, log=sys.stderr)
    info = server.info
    sys.stderr.write(f"lql serve: {args.path} ({info['model'] or '?'}, {info['family'] or '?'}, "
                     f"level {str(info['extract_level']).upper()}) read-only on {server.url} "
                     f"— Ctrl-C to stop\n")
    from ..remote.client import is_loopback
    if not is_loopback(args.host):
        sys.stderr.write("lql serve: warning: listening beyond this machine; the server has no "
                         "authentication, anyone who can reach it can query the model\n")
    sys.stderr.flush()
    try:                                            # SIGTERM stops it like Ctrl-C
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:                              # not the main thread
        previous = None
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()
    sys.stderr.write("lql serve: stopped\n")
    sys.stderr.flush()
    return 0

