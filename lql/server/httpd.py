"""The HTTP server behind ``lql serve``: one read-only vindex, JSON in and out.

    GET  /health   {"status": "ok", "lql": "<version>"}
    GET  /info     a summary of the served vindex's index.json
    POST /query    {"lql": "<statements>", "chat": "AUTO|ON|OFF" (optional)}
                   → a JSON array of results (the result contract, ``Result.to_dict()``)

Every answer is JSON. A refused statement, a statement that fails, malformed
JSON or a body over :data:`MAX_BODY_BYTES` get an error result
(``{"kind": "error", ...}``) with a 4xx status; a bug in a handler gets one
with status 500; no answer ever carries a traceback.

Requests are served on threads (:class:`~http.server.ThreadingHTTPServer`),
but statements run one at a time under a lock: the numpy model state and the
session are not thread-safe.
"""

from __future__ import annotations

import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import LqlError, LqlSyntaxError
from ..remote.policy import server_refusal
from ..result import Result

__all__ = ["VindexServer", "make_server", "MAX_BODY_BYTES", "vindex_info"]

#: largest POST body accepted (a query is text; 1 MiB is plenty)
MAX_BODY_BYTES = 1 << 20
#: seconds a connection may stall while sending its request
READ_TIMEOUT_S = 30

_CHAT_MODES = ("AUTO", "ON", "OFF")


def vindex_info(v) -> dict[str, Any]:
    """What ``GET /info`` reports about vindex ``v`` (from its index.json)."""
    from .. import __version__
    return {
        "lql": __version__, "name": v.path.name, "model": v.model, "family": v.family,
        "num_layers": v.num_layers, "layers": list(v.layers), "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size, "vocab_size": v.vocab_size,
        "dtype": v.dtype, "extract_level": v.level,
        "has_model_weights": v.has_model_weights, "read_only": True,
    }


class _QueryError(Exception):
    """A request refused before anything ran: the HTTP status and the error result."""

    def __init__(self, status: int, statement: str, message: str, error_type: str):
        super().__init__(message)
        self.status = status
        self.result = Result.error(statement, message, error_type=error_type)


class VindexServer(ThreadingHTTPServer):
    """Serves one vindex, opened read-only in a server-side :class:`~lql.session.Session`."""

    daemon_threads = True

    def __init__(self, session, address: tuple[str, int], *, log=None):
        self.session = session
        self.info = vindex_info(session.vindex)
        self.lock = threading.Lock()
        self.log = log                    # a text stream for the access log, or None
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        addr, port = self.server_address[:2]
        # the bound socket reports a str host; the stubs also allow the bytes one can bind with
        host = addr.decode() if isinstance(addr, (bytes, bytearray)) else addr
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    # ------------------------------------------------------------ queries
    def run_query(self, payload: Any) -> tuple[int, list[dict[str, Any]]]:
        """The status and result list for one decoded ``POST /query`` body."""
        try:
            text, chat = self._check_payload(payload)
            stmts = self._parse(text)
            for stmt in stmts:
                why = server_refusal(stmt)
                if why is not None:
                    raise _QueryError(HTTPStatus.FORBIDDEN, stmt.keyword, why, "RefusedError")
        except _QueryError as exc:
            return exc.status, [exc.result.to_dict()]
        done: list[Result] = []
        with self.lock:
            session = self.session
            session.chat_mode = chat
            try:
                for r in session.execute_iter(text):
                    done.append(r)
            except LqlError as exc:
                done.append(Result.error(getattr(exc, "lql_statement", None) or "ERROR",
                                         str(exc), error_type=type(exc).__name__))
                return HTTPStatus.BAD_REQUEST, [r.to_dict() for r in done]
            except Exception as exc:          # a bug in a handler: say so, keep serving
                self._log_line(f"internal error in {text[:200]!r}: {type(exc).__name__}: {exc}")
                done.append(Result.error(getattr(exc, "lql_statement", None) or "ERROR",
                                         f"internal error: {type(exc).__name__}: {exc}",
                                         error_type=type(exc).__name__))
                return HTTPStatus.INTERNAL_SERVER_ERROR, [r.to_dict() for r in done]
        return HTTPStatus.OK, [r.to_dict() for r in done]

    @staticmethod
    def _check_payload(payload: Any):
        from ..ast import ChatMode
        if not isinstance(payload, dict) or not isinstance(payload.get("lql"), str):
            raise _QueryError(HTTPStatus.BAD_REQUEST, "ERROR",
                              'the body must be a JSON object {"lql": "<statements>"}',
                              "RequestError")
        unknown = sorted(set(payload) - {"lql", "chat"})
        if unknown:
            raise _QueryError(HTTPStatus.BAD_REQUEST, "ERROR",
                              f"unknown field(s) {', '.join(map(repr, unknown))} in the body "
                              f'(expected "lql" and optionally "chat")', "RequestError")
        chat = payload.get("chat", "AUTO")
        if not isinstance(chat, str) or chat.upper() not in _CHAT_MODES:
            raise _QueryError(HTTPStatus.BAD_REQUEST, "ERROR",
                              f'"chat" must be one of {", ".join(_CHAT_MODES)}, not {chat!r}',
                              "RequestError")
        return payload["lql"], ChatMode(chat.upper())

    def _parse(self, text: str) -> list:
        try:
            stmts = self.session.parse(text)
        except LqlSyntaxError as exc:
            raise _QueryError(HTTPStatus.BAD_REQUEST, "SYNTAX ERROR", str(exc),
                              type(exc).__name__) from None
        except LqlError as exc:
            raise _QueryError(HTTPStatus.BAD_REQUEST, "ERROR", str(exc),
                              type(exc).__name__) from None
        if not stmts:
            raise _QueryError(HTTPStatus.BAD_REQUEST, "ERROR", "no statement in the query",
                              "RequestError")
        return stmts

    def _log_line(self, line: str) -> None:
        if self.log is not None:
            try:
                self.log.write(line.rstrip("\n") + "\n")
                self.log.flush()
            except (OSError, ValueError):
                pass


class _Handler(BaseHTTPRequestHandler):
    server: VindexServer
    timeout = READ_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    server_version = "lql-serve"

    # ------------------------------------------------------------ routes
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            from .. import __version__
            self._send(HTTPStatus.OK, {"status": "ok", "lql": __version__})
        elif path == "/info":
            self._send(HTTPStatus.OK, self.server.info)
        elif path == "/query":
            self._fail(HTTPStatus.METHOD_NOT_ALLOWED, "POST /query with a JSON body")
        else:
            self._fail(HTTPStatus.NOT_FOUND, f"no such endpoint {path!r} "
                                             f"(GET /health, GET /info, POST /query)")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/query":
            self._drain_or_close()
            self._fail(HTTPStatus.NOT_FOUND, f"no such endpoint {path!r} (POST /query)")
            return
        body = self._read_body()
        if body is None:
            return
        try:
            payload = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            self._fail(HTTPStatus.BAD_REQUEST, "the body is not UTF-8 text")
            return
        except json.JSONDecodeError as exc:
            self._fail(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON ({exc})")
            return
        status, results = self.server.run_query(payload)
        self._send(status, results)

    # ------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._fail(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
            return None
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw) if raw is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._fail(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True            # the body is never read
            self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}")
            return None
        return self.rfile.read(length)

    def _drain_or_close(self) -> None:
        raw = self.headers.get("Content-Length") or "0"
        if raw.isdigit() and int(raw) <= MAX_BODY_BYTES:
            self.rfile.read(int(raw))
        else:
            self.close_connection = True

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _fail(self, status: int, message: str) -> None:
        result = Result.error("ERROR", message, error_type="RequestError", http_status=int(status))
        self._send(status, [result.to_dict()])

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's own errors (bad request line, unsupported method) as JSON too."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        self._fail(code, message or phrase)

    def log_message(self, format: str, *args) -> None:
        self.server._log_line(f"{self.address_string()} - {format % args}")


def make_server(session, host: str = "127.0.0.1", port: int = 8080, *,
                log=sys.stderr) -> VindexServer:
    """A server for the vindex ``session`` uses (``port=0`` picks a free port).

    ``log`` is the access-log stream (``None`` for silence). Run it with
    ``serve_forever()``; stop it with ``shutdown()`` then ``server_close()``.
    """
    from ..errors import NoVindexError
    if getattr(session, "vindex", None) is None:
        raise NoVindexError("lql serve needs a vindex: the session has none in use")
    return VindexServer(session, (host, port), log=log)
