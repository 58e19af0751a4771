"""Running the ASGI app under uvicorn: a connection cap, a header deadline, clean stop.

uvicorn's h11 protocol has a keep-alive timer but no deadline for a request's headers
(each byte received cancels the timer), so a client sending one byte every few seconds
would hold its connection forever. :class:`DeadlineH11` closes a connection whose
request line and headers are not complete ``header_timeout_s`` after it opened (or after
the previous response), and logs one line. Bodies have their own deadline in the app.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import App, ModelHost, ServeConfig, build_app

__all__ = ["DeadlineH11", "make_uvicorn", "ServerThread"]


class DeadlineH11(H11Protocol):
    header_timeout_s: float = 10.0
    log = None                                        # set per server (a callable)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    _hdr_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._hdr_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        t = getattr(self, "_hdr_timer", None)
        if t is not None:
            t.cancel()
            self._hdr_timer = None

    def _too_slow(self) -> None:
        self._hdr_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.log is not None and getattr(self.conn, "_receive_buffer", b""):
                c = self.client
                self.log(f"lql serve: {c[0]}:{c[1] if c else '?'} sent its request headers too "
                         f"slowly; connection dropped after {self.header_timeout_s:g} s")
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def make_uvicorn(hosts: list[ModelHost], cfg: ServeConfig) -> tuple[uvicorn.Server, App]:
    asgi, state = build_app(hosts, cfg)
    proto = type("LqlH11", (DeadlineH11,), {"header_timeout_s": cfg.header_timeout_s,
                                            "log": staticmethod(cfg.log) if cfg.log else None})
    config = uvicorn.Config(asgi, host=cfg.host, port=cfg.port, http=proto,
                            lifespan="off", access_log=False, log_level="warning",
                            limit_concurrency=cfg.max_connections, backlog=256,
                            timeout_keep_alive=5, timeout_graceful_shutdown=3,
                            server_header=False, proxy_headers=False)
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    return uvicorn.Server(config), state


class ServerThread:
    """A server on a background thread (tests, benchmarks, Python use): ``url``, ``stop()``."""

    def __init__(self, hosts: list[ModelHost], cfg: ServeConfig):
        self.server, self.state = make_uvicorn(hosts, cfg)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.cfg = cfg

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self, timeout: float = 30.0) -> ServerThread:
        import time
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        for s in self.server.servers:
            for sock in s.sockets:
                return int(sock.getsockname()[1])
        return self.cfg.port

    @property
    def url(self) -> str:
        host = self.cfg.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.state.close()
