"""``lql serve PATH [PATH...]``: serve vindexes over HTTP (LARQL's /v1 API) until Ctrl-C.

The server is an ASGI app (:mod:`lql.server.app`, Starlette) run by uvicorn; both come
with the ``serve`` extra (``pip install 'lql[serve]'``). Without them ``lql serve`` says
so and exits with status 1. :func:`open_server` keeps the old standard-library server
(:mod:`lql.server.httpd`, read-only, one request at a time) for Python callers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import LqlError

__all__ = ["cli_serve", "open_server", "SERVE_HINT", "add_serve_arguments", "model_ids"]

SERVE_HINT = ("lql serve needs the `serve` extra (starlette and uvicorn): "
              "pip install 'lql[serve]'")


def open_server(path, host: str = "127.0.0.1", port: int = 8080, *, log=sys.stderr):
    """The standard-library server (:mod:`lql.server.httpd`) for the vindex at ``path``."""
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


def add_serve_arguments(se) -> None:
    """The ``lql serve`` flags (lql/cli.py builds the subparser)."""
    se.add_argument("path", nargs="*", default=[], metavar="PATH")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=8080)
    se.add_argument("--api-key", default=None, metavar="KEY",
                    help="require Authorization: Bearer KEY (default: $LQL_API_KEY)")
    se.add_argument("--insecure-no-key", action="store_true",
                    help="allow a non-loopback --host without an API key (anyone who can "
                         "reach the port can use the model)")
    se.add_argument("--max-sessions", type=int, default=64, metavar="N")
    se.add_argument("--session-ttl", type=float, default=1800.0, metavar="S")
    se.add_argument("--timeout", type=float, default=120.0, metavar="S",
                    help="wall-time budget of one request (default 120)")
    se.add_argument("--workers", type=int, default=2, metavar="N")
    se.add_argument("--generate-workers", type=int, default=1, metavar="N")
    se.add_argument("--queue-limit", type=int, default=64, metavar="N")
    se.add_argument("--max-connections", type=int, default=128, metavar="N")
    se.add_argument("--max-generate", type=int, default=512, metavar="N")
    se.add_argument("--patch-dir", action="append", default=[], metavar="DIR",
                    help="a folder whose patch files POST /v1/patches/apply may load by url")
    se.add_argument("--allow-host", action="append", default=[], metavar="NAME")
    se.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN")
    se.add_argument("--no-warmup", action="store_true")
    se.add_argument("--blas-threads", type=int, default=1, metavar="N",
                    help="BLAS threads per worker (default 1; 0: leave the library default)")
    se.add_argument("--legacy", action="store_true",
                    help="the old standard-library server (read-only, one request at a time)")


def pin_blas_threads(n: int) -> None:
    """One BLAS thread per worker unless the user set one: the server's parallelism is its
    worker threads, and several callers each fanning out BLAS threads over the same cores
    made INFER 16x slower on a 2-core machine (measured: docs/SERVER.md). Must run before
    numpy is imported; the environment the user set wins."""
    if n <= 0:
        return
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))


def model_ids(paths: list[Path]) -> list[str]:
    """LARQL-style model ids: the folder name without ``.vindex``, made unique."""
    ids: list[str] = []
    for p in paths:
        base = p.name[:-len(".vindex")] if p.name.endswith(".vindex") else p.name
        base = "".join(c if c.isalnum() or c in "._-" else "-" for c in base) or "model"
        mid, n = base, 2
        while mid in ids:
            mid, n = f"{base}-{n}", n + 1
        ids.append(mid)
    return ids


def cli_serve(args) -> int:
    """Entry point of ``lql serve``."""
    paths = args.path if isinstance(args.path, list) else ([args.path] if args.path else [])
    if not paths:
        sys.stderr.write("usage: lql serve PATH [PATH...] [--host H] [--port P] [--api-key KEY]\n"
                         "error: lql serve needs the PATH of a vindex to serve\n")
        return 2
    if getattr(args, "legacy", False):
        return _legacy(paths[0], args)
    pin_blas_threads(getattr(args, "blas_threads", 1))
    for p in paths:                                # a missing path: USE's own error first
        if not Path(p).expanduser().exists():
            from ..session import Session
            Session().query(f"USE {_quote(str(p))}")
    try:
        from .app import ModelHost, ServeConfig
        from .asgi_serve import make_uvicorn
    except ImportError as exc:
        sys.stderr.write(f"error: {SERVE_HINT} ({exc.name or exc} is missing)\n")
        return 1
    from ..remote.client import is_loopback
    key = args.api_key or os.environ.get("LQL_API_KEY") or None
    if not is_loopback(args.host) and not key and not args.insecure_no_key:
        sys.stderr.write(f"error: lql serve refuses to listen on {args.host} without an API key "
                         f"(--api-key KEY or LQL_API_KEY); pass --insecure-no-key to do it "
                         f"anyway\n")
        return 2

    def log(line: str) -> None:
        sys.stderr.write(line.rstrip("\n") + "\n")
        sys.stderr.flush()

    cfg = ServeConfig(host=args.host, port=args.port, api_key=key,
                      max_sessions=args.max_sessions, session_ttl_s=args.session_ttl,
                      timeout_s=args.timeout, workers=args.workers,
                      generate_workers=args.generate_workers, queue_limit=args.queue_limit,
                      max_connections=args.max_connections, max_generate=args.max_generate,
                      patch_dirs=[Path(d).resolve() for d in args.patch_dir],
                      allow_hosts=list(args.allow_host), allow_origins=list(args.allow_origin),
                      warmup=not args.no_warmup, log=log)
    resolved = [Path(p).expanduser().resolve() for p in paths]
    hosts = []
    for mid, p in zip(model_ids(resolved), resolved):
        h = ModelHost(mid, p)                      # USE's checks and messages
        if cfg.warmup:
            h.warmup()
        hosts.append(h)
    import socket
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise LqlError(f"lql serve: cannot listen on {args.host}:{args.port}: "
                       f"{exc.strerror or exc}") from None
    sock.listen(256)                               # connections queue until uvicorn runs
    port = sock.getsockname()[1]
    server, state = make_uvicorn(hosts, cfg)
    names = ", ".join(f"{h.id} ({h.model or '?'}, level {h.level.upper()})" for h in hosts)
    prefix = "/v1" if len(hosts) == 1 else "/v1/{model_id}"
    host = f"[{args.host}]" if ":" in args.host else args.host
    log(f"lql serve: {names} on http://{host}:{port}{prefix} "
        f"({'API key required' if key else 'no API key'}) — Ctrl-C to stop")
    if not is_loopback(args.host) and not key:
        log("lql serve: warning: listening beyond this machine without an API key")
    try:
        with _sigterm_interrupts():             # uvicorn re-raises the signal once it stopped
            server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        state.close()
    log("lql serve: stopped")
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (a clean stop) while inside; the previous handler
    comes back after.  Off the main thread signals cannot be set: nothing changes."""
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:                          # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _legacy(path: str, args) -> int:
    server = open_server(path, args.host, args.port, log=sys.stderr)
    info = server.info
    sys.stderr.write(f"lql serve: {path} ({info['model'] or '?'}, {info['family'] or '?'}, "
                     f"level {str(info['extract_level']).upper()}) read-only on {server.url} "
                     f"— Ctrl-C to stop\n")
    sys.stderr.flush()

    try:
        with _sigterm_interrupts():
            server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.stderr.write("lql serve: stopped\n")
    sys.stderr.flush()
    return 0
