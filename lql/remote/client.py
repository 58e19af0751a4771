"""The client side of ``USE REMOTE``: a session's link to a vindex served by ``lql serve``.

While ``session.remote`` holds a :class:`RemoteVindex`, :meth:`Session._run`
asks it first (:meth:`RemoteVindex.claims`): read-only statements are sent to
the server as their canonical text (``stmt.to_lql()``) and its results come back
as :class:`~lql.result.Result` objects with ``meta.remote`` set to the URL;
statements that edit or write from the vindex are refused; ``USE`` / ``USE
MODEL`` run locally and end remote mode. The rest (SET CHAT, HELP, SHOW MODELS,
EXTRACT, STATS/COMPILE/DIFF of local paths, USE REMOTE) run locally as usual.
The session's chat mode (``SET CHAT``) travels with every query.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from .. import ast
from ..errors import LqlError
from ..result import Result
from .policy import SESSION_WRITES, route

__all__ = ["RemoteVindex", "RemoteError", "connect", "normalize_url"]

#: seconds to wait for /health and /info
CONNECT_TIMEOUT_S = 10.0
#: seconds to wait for a query's answer (GENERATE on a large model can be slow)
QUERY_TIMEOUT_S = 600.0


class RemoteError(LqlError):
    """A remote server that cannot be reached, answers oddly, or reports an error.

    ``url`` is the server; ``remote_type`` the error class the server reported
    (``"LevelError"``, ``"RefusedError"``, ...) when it reported one.
    """

    def __init__(self, message: str, url: str, remote_type: str | None = None):
        self.url = url
        self.remote_type = remote_type
        super().__init__(message)


def normalize_url(given: str) -> str:
    """``http(s)://host[:port]`` without a trailing slash; a clear error for anything else."""
    url = given.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteError(f"USE REMOTE needs an http:// URL such as \"http://127.0.0.1:8080\" "
                          f"(the address `lql serve` prints), not {given!r}", given)
    if parts.query or parts.fragment:
        raise RemoteError(f"USE REMOTE takes the server's base URL, without a query or "
                          f"fragment: {given!r}", given)
    return url


def is_loopback(host: str | None) -> bool:
    """``localhost`` or a loopback address (the server's bind check and the client's no-proxy rule)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RemoteVindex:
    """A connection to one ``lql serve`` URL (stateless HTTP; nothing stays open)."""

    def __init__(self, url: str, info: dict[str, Any], *, protocol: str = "legacy",
                 api_key: str | None = None, session_id: str | None = None):
        self.url = url
        self.info = info
        #: "legacy" (lql's old /query server), "lql" (lql serve's /v1 API) or "larql"
        self.protocol = protocol
        self.api_key = api_key
        self.session_id = session_id        # X-Session-Id: this client's server-side overlay
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(
            urllib.parse.urlsplit(url).hostname) else []
        self._opener = urllib.request.build_opener(*handlers)

    # ------------------------------------------------------------ HTTP
    def _request(self, path: str, body: dict[str, Any] | None = None,
                 timeout: float = CONNECT_TIMEOUT_S, method: str | None = None
                 ) -> tuple[int, Any]:
        """``(status, decoded JSON)`` of a GET (``body=None``) or a JSON POST."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method or (
            "GET" if body is None else "POST"))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        if self.session_id:
            req.add_header("X-Session-Id", self.session_id)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:     # 4xx / 5xx: the body still says why
            status, raw = exc.code, exc.read()
            exc.close()
        except urllib.error.URLError as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach the lql server at {self.url}: {reason}",
                              self.url) from None
        except (OSError, ValueError) as exc:      # timeouts, resets, bad URLs
            raise RemoteError(f"cannot reach the lql server at {self.url}: "
                              f"{type(exc).__name__}: {exc}", self.url) from None
        try:
            return status, json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RemoteError(f"{self.url}{path} did not answer like an lql server "
                              f"(HTTP {status}, not JSON)", self.url) from None

    def _request_soft(self, path: str) -> tuple[int, Any]:
        """Like :meth:`_request`, but an answer that is not JSON is status 0, not an error
        (probing which protocol a server speaks)."""
        try:
            return self._request(path)
        except RemoteError as exc:
            if "not JSON" in str(exc):
                return 0, None
            raise

    def query(self, text: str, chat: str = "AUTO") -> list[Result]:
        """Run ``text`` on the server; its results, or a :class:`RemoteError`."""
        path = "/v1/query" if self.protocol == "lql" else "/query"
        status, payload = self._request(path, {"lql": text, "chat": chat},
                                        timeout=QUERY_TIMEOUT_S)
        results = [self._result(d) for d in self._result_list(payload, status)]
        for r in results:
            if r.kind == "error":
                raise RemoteError(f"{r.message} (remote vindex at {self.url})", self.url,
                                  r.meta.get("error_type"))
        if status != 200:
            raise RemoteError(f"the lql server at {self.url} answered HTTP {status}", self.url)
        return results

    def _result_list(self, payload: Any, status: int) -> list[dict[str, Any]]:
        if not isinstance(payload, list) or not all(
                isinstance(d, dict) and isinstance(d.get("statement"), str)
                and isinstance(d.get("kind"), str) for d in payload):
            raise RemoteError(f"{self.url}/query did not answer like an lql server "
                              f"(HTTP {status}, not a list of results)", self.url)
        return payload

    def _result(self, d: dict[str, Any]) -> Result:
        meta = dict(d.get("meta") or {})
        meta["remote"] = self.url
        return Result(d["statement"], d["kind"], list(d.get("columns") or []),
                      [dict(row) for row in d.get("rows") or []], d.get("message"), meta)

    # ------------------------------------------------------------ session hook
    def claims(self, stmt: ast.Statement) -> bool:
        """True when this remote link decides ``stmt`` (sends, refuses or ends remote mode)."""
        return route(stmt) != "local"

    def leaves(self, stmt: ast.Statement) -> bool:
        """True for a statement that ends remote mode (``USE "<local path>"`` ...): the
        session drops this link and runs it locally."""
        return route(stmt) == "leave"

    def run(self, stmt: ast.Statement, *, chat_mode: ast.ChatMode | None = None) -> list[Result]:
        """Send a statement :meth:`claims` returned True for (and :meth:`leaves` False),
        or refuse it with a clear error. ``chat_mode`` is the session's ``ast.ChatMode``."""
        chat = "AUTO" if chat_mode is None else chat_mode.value     # the wire format: a keyword
        if self.protocol == "larql":
            from .larql_client import run_larql
            return run_larql(self, stmt, chat)
        if self.protocol == "lql" and route(stmt) == "refuse":
            if isinstance(stmt, SESSION_WRITES):                # into this client's overlay
                return self.query(stmt.to_lql(), chat=chat)
            if isinstance(stmt, (ast.ApplyPatch, ast.RemovePatch)):
                from .larql_client import patch_statement
                return patch_statement(self, stmt)
        if route(stmt) == "refuse":
            from ..errors import ExecutionError
            kw = stmt.keyword
            if getattr(stmt, "plot", None) is not None:
                raise ExecutionError(
                    f"{kw} ... PLOT writes a file, and the vindex in use is remote ({self.url}): "
                    f"run it without PLOT and draw the result here (lql --plot DIR, or "
                    f"result.plot() in Python)")
            if kw == "TRACE":
                raise ExecutionError(
                    f"TRACE ... SAVE writes the activations to a local file, and the vindex in "
                    f"use is remote ({self.url}): run TRACE without SAVE, or USE a local vindex")
            if kw == "INFER":
                raise ExecutionError(
                    f"INFER ... STEER / INJECT reads local vector and prompt files, and the vindex "
                    f"in use is remote ({self.url}): USE a local vindex or USE MODEL to steer")
            raise ExecutionError(
                f"{kw} needs a local vindex, but the session uses the read-only remote vindex "
                f"at {self.url}: edits need a local vindex — EXTRACT MODEL \"<source>\" INTO "
                f"\"<name>.vindex\" or USE \"<local vindex path>\" first")
        return self.query(stmt.to_lql(), chat=chat)

    def __repr__(self) -> str:
        return f"RemoteVindex({self.url!r})"


def connect(given: str) -> RemoteVindex:
    """Find out what serves ``given`` and return a :class:`RemoteVindex` for it.

    ``GET /v1/health`` first: an answer with an ``"lql"`` field is ``lql serve`` (its /v1
    API; ``/v1/info`` describes the vindex), one without is a LARQL server (``/v1/stats``
    describes it). Otherwise the old lql server's ``/health`` and ``/info``. The API key
    comes from ``$LQL_API_KEY``; a fresh ``X-Session-Id`` gives this client its own
    overlay on servers that keep one."""
    url = normalize_url(given)
    key = os.environ.get("LQL_API_KEY") or None
    sid = "lql-" + uuid.uuid4().hex[:16]
    probe = RemoteVindex(url, {}, api_key=key)
    status, health = probe._request_soft("/v1/health")
    if status == 200 and isinstance(health, dict) and health.get("status") == "ok":
        protocol = "lql" if "lql" in health else "larql"
        status, info = probe._request("/v1/info" if protocol == "lql" else "/v1/stats")
        if status == 401:
            raise RemoteError(f"{url} needs an API key: set LQL_API_KEY to it", url)
        if status != 200 or not isinstance(info, dict):
            raise RemoteError(f"{url} did not describe its vindex (HTTP {status})", url)
        if protocol == "larql":
            info = {"model": info.get("model"), "family": info.get("family"),
                    "num_layers": info.get("layers"), "hidden_size": info.get("hidden_size"),
                    "vocab_size": info.get("vocab_size"), "dtype": info.get("dtype"),
                    "extract_level": info.get("extract_level"),
                    "layer_bands": info.get("layer_bands")}
        return RemoteVindex(url, info, protocol=protocol, api_key=key, session_id=sid)
    status, health = probe._request("/health")
    if status != 200 or not isinstance(health, dict) or health.get("status") != "ok":
        raise RemoteError(f"{url} is not a healthy lql server (/health answered HTTP {status})",
                          url)
    status, info = probe._request("/info")
    if status != 200 or not isinstance(info, dict) or "num_layers" not in info:
        raise RemoteError(f"{url} did not describe its vindex (/info answered HTTP {status})",
                          url)
    probe.info = info
    return probe
