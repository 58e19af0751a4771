"""The vindex server as an ASGI application (Starlette), run by uvicorn (``lql serve``).

Every endpoint becomes LQL statements run in a :class:`~lql.session.Session` on a worker
thread; the JSON is LARQL's shape (:mod:`lql.server.larql_api`) or, for ``POST /v1/query``,
the result contract (``Result.to_dict()``). See docs/SERVER.md.

Needs the ``serve`` extra (starlette, uvicorn); importing this module without it raises
ImportError, which ``lql serve`` turns into an install hint.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__, ast
from ..errors import LqlError, LqlSyntaxError
from ..remote.policy import server_refusal, session_refusal
from ..result import Result
from ..session import Cancelled, Session
from . import larql_api as L
from .guard import (
    GuardError,
    Scrubber,
    allowed_hosts,
    allowed_patch_file,
    host_allowed,
    json_depth_ok,
    key_matches,
    origin_allowed,
    safe_name,
)
from .sessions import ClientSession, SessionStore

__all__ = ["ServeConfig", "ModelHost", "build_app"]


@dataclass
class ServeConfig:
    """Limits and switches of one server (``lql serve`` flags; defaults in docs/SERVER.md)."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_sessions: int = 64
    session_ttl_s: float = 1800.0
    timeout_s: float = 120.0             # wall-time budget of one request's work
    workers: int = 2                     # short requests (WALK, DESCRIBE, INFER, ...)
    generate_workers: int = 1            # GENERATE / completions: their own pool
    queue_limit: int = 64                # waiting requests per pool before 503
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_query_chars: int = 65536
    max_prompt_chars: int = 8192
    max_prompt_tokens: int = 1024
    max_generate: int = 512
    max_top: int = 1000
    max_limit: int = 10000
    body_timeout_s: float = 10.0         # whole-body deadline (slow senders dropped: 408)
    header_timeout_s: float = 10.0       # request-line + headers deadline (uvicorn protocol)
    max_connections: int = 128
    patch_dirs: list[Path] = field(default_factory=list)
    allow_hosts: list[str] = field(default_factory=list)
    allow_origins: list[str] = field(default_factory=list)
    state_dir: Path | None = None
    warmup: bool = True
    log: Callable[[str], None] | None = None


class ModelHost:
    """One served vindex: the base vindex object every session shares, and its facts."""

    def __init__(self, model_id: str, path: Path):
        self.id = model_id
        self.path = path
        s = Session()
        s.query(f"USE {ast.quote(str(path))}")
        self.vindex = s.vindex
        v = self.vindex
        self.model = v.model
        self.num_layers = int(v.num_layers)
        self.has_weights = bool(v.has_model_weights)
        self.level = str(v.level)
        stats = self.fresh().query("STATS")
        self.stats_row = stats.rows[0] if stats.rows else {}
        self.bands = self.stats_row.get("bands") if isinstance(self.stats_row, dict) else None
        self.features = int(self.stats_row.get("features") or 0)

    def fresh(self) -> Session:
        """A request's own session over the shared base vindex (read-only use)."""
        s = Session(cwd=self.path.parent)
        s.use_vindex(self.vindex)
        return s

    def warmup(self) -> None:
        """Build what the first requests would build (the model for INFER), one at a time,
        so concurrent first requests do not race to build it."""
        s = self.fresh()
        for q in ('WALK "warm" TOP 1', 'DESCRIBE "warm"'):
            s.query(q)
        if self.level in ("inference", "all") or self.has_weights:
            s.query('INFER "warm" TOP 1 RAW')

    def info(self) -> dict[str, Any]:
        v = self.vindex
        return {"lql": __version__, "name": self.path.name, "model": v.model,
                "family": v.family, "num_layers": v.num_layers, "layers": list(v.layers),
                "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                "vocab_size": v.vocab_size, "dtype": v.dtype, "extract_level": v.level,
                "has_model_weights": v.has_model_weights, "read_only": False}

    def count_tokens(self, text: str) -> int:
        tok = getattr(self.vindex, "tokenizer", None)
        if tok is None:
            return len(text)
        try:
            return len(tok.encode(text).ids)
        except Exception:                   # a tokenizer error is the executor's to report
            return 0


class _Pool:
    """A bounded thread pool: ``workers`` threads, at most ``limit`` requests admitted."""

    def __init__(self, name: str, workers: int, queue_limit: int):
        self.name = name
        self.ex = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"lql-{name}")
        self.limit = max(1, workers) + max(0, queue_limit)
        self.admitted = 0

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        if self.admitted >= self.limit:
            raise GuardError(503, f"the server is busy ({self.name} queue full: {self.limit} "
                                  f"requests admitted); retry later")
        self.admitted += 1
        fut = self.ex.submit(fn)
        loop = asyncio.get_running_loop()
        fut.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._done))
        return fut

    def _done(self) -> None:
        self.admitted -= 1


def _err(status: int, message: str, error_type: str = "RequestError",
         headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status,
                        headers=headers)


class _RunError(Exception):
    def __init__(self, status: int, message: str, error_type: str, done: list[Result]):
        super().__init__(message)
        self.status, self.error_type, self.done = status, error_type, done


def _status_for(exc: BaseException) -> int:
    name = type(exc).__name__
    if name == "RefusedError":
        return 403
    if name == "NotBuiltError":
        return 501
    if name in ("LevelError", "NoVindexError"):
        return 409
    return 400


class App:
    """The server's state (models, sessions, pools) and its endpoints."""

    def __init__(self, hosts: list[ModelHost], cfg: ServeConfig):
        self.cfg = cfg
        self.hosts = {h.id: h for h in hosts}
        self.default = hosts[0] if len(hosts) == 1 else None
        self.sessions = SessionStore(cfg.state_dir, ttl_s=cfg.session_ttl_s, cap=cfg.max_sessions)
        self.short = _Pool("short", cfg.workers, cfg.queue_limit)
        self.long = _Pool("generate", cfg.generate_workers, cfg.queue_limit)
        self.started = time.monotonic()
        self.served = 0
        self.hosts_ok = allowed_hosts(cfg.host, cfg.allow_hosts)
        self.origins_ok = frozenset(cfg.allow_origins)
        named: dict[str, str | os.PathLike[str]] = {f"<vindex:{h.id}>": h.path for h in hosts}
        named["<sessions>"] = self.sessions.root
        for i, d in enumerate(cfg.patch_dirs):
            named[f"<patch-dir{i}>"] = d
        named["<home>"] = os.path.expanduser("~")
        self.scrub = Scrubber(named)

    # ------------------------------------------------------------ plumbing
    def log(self, line: str) -> None:
        if self.cfg.log is not None:
            self.cfg.log(line)

    def host_of(self, request: Request) -> ModelHost:
        mid = request.path_params.get("model_id")
        if mid is None:
            if self.default is None:
                raise GuardError(404, "this server holds several models: address one as "
                                      "/v1/{model_id}/... (GET /v1/models lists them)")
            return self.default
        h = self.hosts.get(mid)
        if h is None:
            raise GuardError(404, f"model {mid!r} not found (GET /v1/models lists them)"[:300])
        return h

    def client_session(self, request: Request, host: ModelHost, *, create: bool = True
                       ) -> ClientSession | None:
        sid = request.headers.get("x-session-id")
        if sid is None:
            return None
        return self.sessions.get(host.id, sid, host.vindex, create=create)

    def check_prompt(self, host: ModelHost, prompt: Any) -> None:
        if isinstance(prompt, str):
            if len(prompt) > self.cfg.max_prompt_chars:
                raise GuardError(413, f"the prompt is {len(prompt)} characters; the limit is "
                                      f"{self.cfg.max_prompt_chars}")
            n = host.count_tokens(prompt)
            if n > self.cfg.max_prompt_tokens:
                raise GuardError(413, f"the prompt is {n} tokens; the limit is "
                                      f"{self.cfg.max_prompt_tokens}")

    async def body(self, request: Request) -> dict[str, Any]:
        raw = request.scope.get("lql.body", b"")
        if not raw:
            return {}
        doc = request.scope.get("lql.json")
        if not isinstance(doc, dict):
            raise GuardError(400, "the body must be a JSON object")
        return doc

    def _execute(self, session: Session, text: str, chat: str | None,
                 policy: Callable[[Any], str | None], on_token=None) -> list[Result]:
        """Worker-thread body: check the statements against ``policy`` then run them."""
        try:
            stmts = session.parse(text)
        except LqlSyntaxError as exc:
            raise _RunError(400, str(exc), "LqlSyntaxError", []) from None
        except RecursionError:
            raise _RunError(400, "the query nests too deeply", "RequestError", []) from None
        except LqlError as exc:
            raise _RunError(400, str(exc), type(exc).__name__, []) from None
        if not stmts:
            raise _RunError(400, "no statement in the query", "RequestError", [])
        for st in stmts:
            why = policy(st)
            if why is not None:
                raise _RunError(403, why, "RefusedError", [])
        if chat is not None:
            session.chat_mode = ast.ChatMode(chat)
        session.on_token = on_token
        done: list[Result] = []
        try:
            for st in stmts:
                done.extend(session._run(st, script=True))
        except Cancelled:
            raise _RunError(499, "cancelled", "Cancelled", done) from None
        except LqlError as exc:
            raise _RunError(_status_for(exc), str(exc), type(exc).__name__, done) from None
        except RecursionError:
            raise _RunError(400, "the query nests too deeply", "RequestError", done) from None
        finally:
            session.on_token = None
        return done

    async def run(self, request: Request, session: Session, text: str, *,
                  chat: str | None = None, policy: Callable[[Any], str | None] = server_refusal,
                  pool: _Pool | None = None, cs: ClientSession | None = None,
                  on_token=None) -> tuple[list[Result], float]:
        """Run ``text`` on a worker; cancel it when the client goes or the budget runs out."""
        if len(text) > self.cfg.max_query_chars:
            raise GuardError(413, f"the query is {len(text)} characters; the limit is "
                                  f"{self.cfg.max_query_chars}")
        pool = pool or self.short

        abandoned = threading.Event()

        def work() -> list[Result]:
            if abandoned.is_set():          # the client left while this waited in the queue
                raise _RunError(499, "cancelled", "Cancelled", [])
            if cs is None:
                return self._execute(session, text, chat, policy, on_token)
            with cs.lock:
                cs.touch()
                return self._execute(session, text, chat, policy, on_token)

        t0 = time.perf_counter()
        fut = pool.submit(work)
        wrapped = asyncio.wrap_future(fut)
        wrapped.add_done_callback(_retrieve)
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({wrapped, gone}, timeout=self.cfg.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:           # the response was abandoned (stream closed)
            abandoned.set()
            session.cancel()
            raise
        finally:
            if not gone.done():
                gone.cancel()
        if wrapped not in done:
            abandoned.set()
            session.cancel()
            if gone in done:
                self.log(f"lql serve: {_who(request)} disconnected during {request.method} "
                         f"{request.url.path}; its work was cancelled after "
                         f"{time.perf_counter() - t0:.1f} s")
                raise _Gone()
            raise GuardError(408, f"the request ran past its {self.cfg.timeout_s:g} s wall-time "
                                  f"budget (--timeout) and was cancelled")
        results = wrapped.result()
        return results, (time.perf_counter() - t0) * 1000.0

    def error_response(self, exc: BaseException) -> Response:
        if isinstance(exc, GuardError):
            hdr = {"Retry-After": "1"} if exc.status == 503 else None
            return _err(exc.status, self.scrub(str(exc)), headers=hdr)
        if isinstance(exc, _RunError):
            return _err(exc.status, self.scrub(str(exc)), exc.error_type)
        self.log(f"lql serve: internal error: {type(exc).__name__}: {self.scrub(str(exc))[:300]}")
        return _err(500, f"internal error ({type(exc).__name__})", "InternalError")

    # ------------------------------------------------------------ LARQL endpoints
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "uptime_seconds": int(time.monotonic() - self.started),
                             "requests_served": self.served, "lql": __version__})

    async def models(self, request: Request) -> Response:
        multi = self.default is None
        return JSONResponse({"models": [
            {"id": h.id, "path": f"/v1/{h.id}" if multi else "/v1", "features": h.features,
             "loaded": True} for h in self.hosts.values()]})

    async def stats(self, request: Request) -> Response:
        host = self.host_of(request)
        cs = self.client_session(request, host, create=False)
        s = cs.session if cs else host.fresh()
        (r,), _ = await self.run(request, s, "STATS", cs=cs)
        return JSONResponse(L.stats_json(r, host.has_weights))

    def _session_for(self, request: Request, host: ModelHost, *, create: bool = False
                     ) -> tuple[Session, ClientSession | None]:
        cs = self.client_session(request, host, create=create)
        return (cs.session, cs) if cs is not None else (host.fresh(), None)

    async def walk(self, request: Request) -> Response:
        host = self.host_of(request)
        params = dict(request.query_params)
        self.check_prompt(host, params.get("prompt"))
        text, keep = L.walk_lql(params, host.num_layers, self.cfg.max_top)
        if not text:
            return JSONResponse(L.walk_json(params["prompt"], None, keep, 0.0))
        s, cs = self._session_for(request, host)
        (r,), ms = await self.run(request, s, text, cs=cs)
        return JSONResponse(L.walk_json(params["prompt"], r, keep, ms))

    async def describe(self, request: Request) -> Response:
        host = self.host_of(request)
        text, opts = L.describe_lql(dict(request.query_params), self.cfg.max_limit)
        s, cs = self._session_for(request, host)
        (r,), ms = await self.run(request, s, text, cs=cs)
        return JSONResponse(L.describe_json(r, opts, host.model, ms))

    async def select(self, request: Request) -> Response:
        host = self.host_of(request)
        text = L.select_lql(await self.body(request), self.cfg.max_limit)
        s, cs = self._session_for(request, host)
        (r,), ms = await self.run(request, s, text, cs=cs)
        return JSONResponse(L.select_json(r, ms))

    async def relations(self, request: Request) -> Response:
        host = self.host_of(request)
        s, cs = self._session_for(request, host)
        (r,), ms = await self.run(request, s, "SHOW RELATIONS WITH EXAMPLES", cs=cs)
        return JSONResponse(L.relations_json(r, ms))

    async def infer(self, request: Request) -> Response:
        host = self.host_of(request)
        body = await self.body(request)
        self.check_prompt(host, body.get("prompt"))
        text, mode = L.infer_lql(body, self.cfg.max_top)
        s, cs = self._session_for(request, host)
        (r,), ms = await self.run(request, s, text, cs=cs)
        return JSONResponse(L.infer_json(body["prompt"], mode, r, ms))

    async def explain(self, request: Request) -> Response:
        host = self.host_of(request)
        body = await self.body(request)
        self.check_prompt(host, body.get("prompt"))
        text, opts = L.explain_lql(body, host.bands, self.cfg.max_top)
        s, cs = self._session_for(request, host)
        (r,), ms = await self.run(request, s, text, cs=cs)
        return JSONResponse(L.explain_json(r, opts, ms))

    def _writable(self, request: Request, host: ModelHost) -> ClientSession:
        cs = self.client_session(request, host, create=True)
        if cs is None:
            raise GuardError(403, "the shared view (no X-Session-Id header) is read-only: send "
                                  "an X-Session-Id header to edit in your own session overlay")
        return cs

    async def insert(self, request: Request) -> Response:
        host = self.host_of(request)
        body = await self.body(request)
        text = L.insert_lql(body)
        cs = self._writable(request, host)
        (r,), ms = await self.run(request, cs.session, text, cs=cs, policy=session_refusal,
                                  chat="AUTO")
        return JSONResponse(L.insert_json(body, r, cs.sid, ms))

    async def patches_apply(self, request: Request) -> Response:
        host = self.host_of(request)
        body = await self.body(request)
        cs = self._writable(request, host)
        doc = body.get("patch")
        url = body.get("url")
        if doc is None and url is None:
            raise GuardError(400, "must provide 'url' or 'patch' in request body")
        if doc is not None and not isinstance(doc, dict):
            raise GuardError(400, "'patch' must be a JSON object (a .vlp document)")
        # LARQL's name: the url, else the patch's description, else "inline-patch";
        # an explicit "name" (the model card's curl sends one) wins
        name = body.get("name") or url or (doc or {}).get("description") or "inline-patch"
        if not isinstance(name, str):
            raise GuardError(400, "'name' must be a string")
        if doc is None:
            src = allowed_patch_file(str(url), self.cfg.patch_dirs)
            try:
                doc = json.loads(src.read_bytes())
            except (OSError, ValueError, RecursionError):
                raise GuardError(400, "the patch file is not a readable JSON patch") from None
            if not isinstance(doc, dict):
                raise GuardError(400, "the patch file is not a JSON object")
        fname = _file_name(name)
        if name in cs.patches:
            raise GuardError(409, f"a patch named {name!r} is already applied in this session "
                                  f"(DELETE /v1/patches/{{name}} first)"[:300])
        path = cs.folder / fname

        def write() -> None:
            from ..edit.patch import Patch, write_patch
            write_patch(Patch.from_json(doc, path=path), path)     # the CLI's atomic writer

        try:
            await asyncio.get_running_loop().run_in_executor(None, write)
        except LqlError as exc:
            raise GuardError(400, f"invalid patch: {exc}") from None
        try:
            results, _ = await self.run(request, cs.session, f"APPLY PATCH {ast.quote(str(path))}",
                                        cs=cs, policy=_allow_all)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        cs.patches[name] = path
        ops = results[-1].meta.get("operations") if results else None
        return JSONResponse({"applied": name, "operations": ops,
                             "active_patches": len(cs.patches), "session": cs.sid})

    async def patches_list(self, request: Request) -> Response:
        host = self.host_of(request)
        cs = self.client_session(request, host, create=False)
        if cs is None:
            sid = request.headers.get("x-session-id")
            body: dict[str, Any] = {"patches": []}
            if sid is not None:
                body["session"] = sid
            return JSONResponse(body)
        (r,), _ = await self.run(request, cs.session, "SHOW PATCHES", cs=cs)
        names = {str(p): n for n, p in cs.patches.items()} | {p.name: n for n, p in cs.patches.items()}
        return JSONResponse({"patches": L.patches_json(r, names), "session": cs.sid})

    async def patches_remove(self, request: Request) -> Response:
        host = self.host_of(request)
        name = request.path_params["name"]
        cs = self.client_session(request, host, create=False)
        if cs is None:
            if request.headers.get("x-session-id") is None:
                raise GuardError(403, "the shared view is read-only: send X-Session-Id")
            raise GuardError(404, "session not found")
        path = cs.patches.get(name)
        if path is None:
            raise GuardError(404, f"patch {name!r} not found in session"[:300])
        await self.run(request, cs.session, f"REMOVE PATCH {ast.quote(str(path))}", cs=cs,
                       policy=_allow_all)
        del cs.patches[name]
        path.unlink(missing_ok=True)
        return JSONResponse({"removed": name, "active_patches": len(cs.patches),
                             "session": cs.sid})

    async def patches_save(self, request: Request) -> Response:
        """Ours: ``SAVE PATCH`` the session's recorded edits (INSERT / DELETE / UPDATE) into
        its folder with the CLI's writer; the saved document comes back in the answer."""
        host = self.host_of(request)
        body = await self.body(request)
        cs = self._writable(request, host)
        name = body.get("name")
        if not isinstance(name, str) or not safe_name(name):
            raise GuardError(400, "'name' must be 1-128 letters, digits, '.', '_' or '-'")
        path = cs.folder / _file_name(name)
        results, _ = await self.run(request, cs.session, f"SAVE PATCH {ast.quote(str(path))}",
                                    cs=cs, policy=_allow_all)
        cs.patches[name] = path
        doc = json.loads(path.read_text(encoding="utf-8"))
        return JSONResponse({"saved": name, "operations": len(doc.get("operations") or []),
                             "session": cs.sid, "patch": doc})

    # ------------------------------------------------------------ ours
    async def query(self, request: Request) -> Response:
        host = self.host_of(request)
        body = await self.body(request)
        text = body.get("lql")
        if not isinstance(text, str):
            raise GuardError(400, 'the body must be a JSON object {"lql": "<statements>"}')
        unknown = sorted(set(body) - {"lql", "chat"})
        if unknown:
            raise GuardError(400, f"unknown field(s) {', '.join(map(repr, unknown))} in the body "
                                  f'(expected "lql" and optionally "chat")')
        chat = str(body.get("chat", "AUTO")).upper()
        if chat not in ("AUTO", "ON", "OFF"):
            raise GuardError(400, '"chat" must be one of AUTO, ON, OFF')
        cs = self.client_session(request, host, create=True)
        s = cs.session if cs is not None else host.fresh()
        policy = session_refusal if cs is not None else server_refusal
        pool = self.long if "GENERATE" in text.upper() else self.short
        try:
            results, _ = await self.run(request, s, text, chat=chat, policy=policy, cs=cs,
                                        pool=pool)
        except _RunError as exc:
            out = [self._scrubbed(r) for r in exc.done]
            out.append(Result.error("ERROR", self.scrub(str(exc)),
                                    error_type=exc.error_type).to_dict())
            return JSONResponse(out, status_code=exc.status)
        return JSONResponse([self._scrubbed(r) for r in results])

    def _scrubbed(self, r: Result) -> dict[str, Any]:
        d = r.to_dict()
        if isinstance(d.get("message"), str):
            d["message"] = self.scrub(d["message"])
        meta = d.get("meta") or {}
        for k in ("path", "source"):
            if isinstance(meta.get(k), str):
                meta[k] = self.scrub(meta[k])
        for row in d.get("rows") or []:
            if isinstance(row.get("path"), str):
                row["path"] = self.scrub(row["path"])
        return d

    async def info(self, request: Request) -> Response:
        return JSONResponse(self.host_of(request).info())

    # ------------------------------------------------------------ OpenAI-style
    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        body = await self.body(request)
        mid = body.get("model")
        host = self.hosts.get(mid) if isinstance(mid, str) and mid in self.hosts else None
        host = host or self.host_of(request)
        n = L._int(body, "max_tokens", 16, 1, self.cfg.max_generate)
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str)
                    and m.get("role") in ("system", "user", "assistant") for m in msgs):
                raise GuardError(400, "'messages' must be a list of {role, content} objects")
            system = [m["content"] for m in msgs if m["role"] == "system"]
            turns = [m for m in msgs if m["role"] != "system"]
            if len(turns) != 1 or turns[0]["role"] != "user":
                raise GuardError(400, "this server answers one user message (plus an optional "
                                      "system message); earlier turns are not supported")
            prompt = turns[0]["content"]
            text = f"INFER {ast.quote(prompt)} CHAT GENERATE {n}"
            if system:
                text = f"INFER {ast.quote(prompt)} CHAT SYSTEM {ast.quote(system[0])} GENERATE {n}"
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str) or not prompt:
                raise GuardError(400, "'prompt' must be a non-empty string")
            text = f"INFER {ast.quote(prompt)} RAW GENERATE {n}"
        self.check_prompt(host, prompt)
        s, cs = self._session_for(request, host)
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            (r,), _ = await self.run(request, s, text, pool=self.long, cs=cs)
            return JSONResponse(_completion(cid, obj, created, host.id, r, chat,
                                            host.count_tokens(prompt)))
        return await self._stream(request, s, cs, text, cid, created, host, chat)

    async def _stream(self, request: Request, s: Session, cs: ClientSession | None, text: str,
                      cid: str, created: int, host: ModelHost, chat: bool) -> Response:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def on_token(tok: str) -> None:
            loop.call_soon_threadsafe(q.put_nowait, ("tok", tok))

        obj = "chat.completion.chunk" if chat else "text_completion"

        async def runner() -> None:
            try:
                (r,), _ = await self.run(request, s, text, pool=self.long, cs=cs,
                                         on_token=on_token)
                await q.put(("end", r))
            except BaseException as exc:       # noqa: B036 — reported to the stream
                await q.put(("err", exc))

        # admission (503) must answer before the stream starts
        if self.long.admitted >= self.long.limit:
            raise GuardError(503, "the server is busy (generate queue full); retry later")
        task = asyncio.create_task(runner())

        def chunk(delta: str | None, finish: str | None) -> str:
            if chat:
                d = {} if delta is None else {"content": delta}
                choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish,
                          "logprobs": None}
            return "data: " + json.dumps({"id": cid, "object": obj, "created": created,
                                          "model": host.id, "choices": [choice]}) + "\n\n"

        async def events():
            try:
                if chat:
                    yield ("data: " + json.dumps({"id": cid, "object": obj, "created": created,
                                                  "model": host.id, "choices": [{
                                                      "index": 0, "delta": {"role": "assistant"},
                                                      "finish_reason": None}]}) + "\n\n")
                while True:
                    kind, val = await q.get()
                    if kind == "tok":
                        yield chunk(val, None)
                    elif kind == "end":
                        yield chunk(None, _finish(val))
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        if isinstance(val, _Gone):
                            return
                        resp_exc = val
                        msg = (self.scrub(str(resp_exc)) if isinstance(resp_exc, (GuardError,
                                                                                 _RunError))
                               else f"internal error ({type(resp_exc).__name__})")
                        yield "data: " + json.dumps({"error": {"message": msg}}) + "\n\n"
                        yield "data: [DONE]\n\n"
                        return
            finally:
                if not task.done():
                    s.cancel()
                    task.cancel()
                    self.log(f"lql serve: {_who(request)} disconnected during {request.method} "
                             f"{request.url.path}; its generation was cancelled")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------ OpenAPI
    async def openapi(self, request: Request) -> Response:
        from .openapi import document
        return JSONResponse(document(__version__, multi=self.default is None))

    def close(self) -> None:
        self.short.ex.shutdown(wait=False, cancel_futures=True)
        self.long.ex.shutdown(wait=False, cancel_futures=True)
        self.sessions.close()


class _Gone(Exception):
    """The client disconnected; nothing more is sent."""


def _allow_all(stmt: Any) -> str | None:
    return None


def _file_name(name: str) -> str:
    """A patch's file name in its session folder: the LARQL name when it is a plain name,
    else a hash of it (a url or description may hold slashes)."""
    import hashlib
    if safe_name(name) and len(name) <= 100:
        return name + ".vlp"
    return "p-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16] + ".vlp"


def _finish(r: Result) -> str:
    return "stop" if str(r.meta.get("stop")) in ("eos", "stop") else "length"


def _completion(cid: str, obj: str, created: int, model: str, r: Result, chat: bool,
                prompt_tokens: int) -> dict[str, Any]:
    text = r.message or ""
    n = len(r.meta.get("token_ids") or [])
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(r)}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice.update(text=text, logprobs=None)
    return {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                      "total_tokens": prompt_tokens + n}}


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body was read already: the next ASGI
    message is the disconnect)."""
    while True:
        try:
            msg = await request.receive()
        except Exception:
            return
        if msg.get("type") == "http.disconnect":
            return


def _retrieve(f: asyncio.Future[Any]) -> None:
    """Mark an abandoned request's outcome as seen (no 'exception never retrieved' noise)."""
    if not f.cancelled():
        f.exception()


def _who(request: Request) -> str:
    c = request.client
    return f"{c.host}:{c.port}" if c else "a client"


# ---------------------------------------------------------------- the ASGI guard layer
class Guard:
    """Pure-ASGI middleware: Host/Origin, key, JSON-only bodies read under a deadline,
    body size and nesting limits. The body is read here once and handed on in the scope."""

    def __init__(self, inner: Any, app: App):
        self.inner = inner
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        app = self.app
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers") or []}
        path = scope.get("path", "")
        method = scope.get("method", "GET")

        async def reply(status: int, msg: str, extra: dict[str, str] | None = None) -> None:
            await _err(status, msg, headers=extra)(scope, receive, send)

        if not host_allowed(headers.get("host"), app.hosts_ok):
            await reply(403, "Host header not allowed (DNS rebinding guard; start the server "
                             "with --allow-host NAME to accept this name)")
            return
        if not origin_allowed(headers.get("origin"), app.hosts_ok, app.origins_ok):
            await reply(403, "cross-origin request refused (start the server with "
                             "--allow-origin ORIGIN to allow a web page)")
            return
        key = app.cfg.api_key
        if key and path not in ("/v1/health", "/health") and not key_matches(
                headers.get("authorization"), key):
            await reply(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                        {"WWW-Authenticate": "Bearer"})
            return
        scope["lql.body"] = b""
        if method in ("POST", "PUT", "PATCH"):
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            length = headers.get("content-length")
            te = headers.get("transfer-encoding", "").lower()
            if length is None and not te:
                length = "0"
            if length is not None and (not length.isdigit()):
                await reply(400, "bad Content-Length")
                return
            if length is not None and int(length) > app.cfg.max_body_bytes:
                await reply(413, f"the body is {length} bytes; the limit is "
                                 f"{app.cfg.max_body_bytes}", {"Connection": "close"})
                return
            if (length is None or int(length) > 0) and ctype != "application/json":
                await reply(415, "bodies must be JSON (Content-Type: application/json)")
                return
            try:
                raw = await asyncio.wait_for(_read_body(receive, app.cfg.max_body_bytes),
                                             timeout=app.cfg.body_timeout_s)
            except TimeoutError:
                app.log(f"lql serve: {_client(scope)} sent its body too slowly; dropped after "
                        f"{app.cfg.body_timeout_s:g} s")
                await reply(408, f"the body did not arrive within {app.cfg.body_timeout_s:g} s",
                            {"Connection": "close"})
                return
            except _TooLarge:
                await reply(413, f"the body is over {app.cfg.max_body_bytes} bytes",
                            {"Connection": "close"})
                return
            except _ClientGone:
                app.log(f"lql serve: {_client(scope)} disconnected while sending "
                        f"{method} {path}")
                return
            if raw:
                if not json_depth_ok(raw, app.cfg.max_json_depth):
                    await reply(400, f"the JSON body nests deeper than "
                                     f"{app.cfg.max_json_depth} levels")
                    return
                try:
                    scope["lql.json"] = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    await reply(400, "the body is not UTF-8 text")
                    return
                except (ValueError, RecursionError) as exc:
                    await reply(400, f"the body is not valid JSON ({str(exc)[:120]})")
                    return
            scope["lql.body"] = raw

        sent = {"started": False}

        async def replay() -> dict[str, Any]:
            if not sent["started"]:
                sent["started"] = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return await receive()

        app.served += 1
        await self.inner(scope, replay if method in ("POST", "PUT", "PATCH") else receive, send)


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _ClientGone()
        part = msg.get("body", b"")
        size += len(part)
        if size > limit:
            raise _TooLarge()
        chunks.append(part)
        if not msg.get("more_body", False):
            return b"".join(chunks)


def _client(scope: dict[str, Any]) -> str:
    c = scope.get("client")
    return f"{c[0]}:{c[1]}" if c else "a client"


def build_app(hosts: list[ModelHost], cfg: ServeConfig) -> tuple[Any, App]:
    """The ASGI callable (guard layer around the Starlette router) and its state."""
    app = App(hosts, cfg)

    def ep(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            try:
                return await fn(request)
            except _Gone:
                return Response(status_code=499)
            except Exception as exc:
                return app.error_response(exc)
        handler.__name__ = fn.__name__
        return handler

    table: list[tuple[str, str, Callable[[Request], Any]]] = [
        ("GET", "describe", app.describe), ("GET", "walk", app.walk),
        ("POST", "select", app.select), ("GET", "relations", app.relations),
        ("GET", "stats", app.stats), ("POST", "infer", app.infer),
        ("POST", "explain-infer", app.explain), ("POST", "insert", app.insert),
        ("POST", "patches/apply", app.patches_apply), ("GET", "patches", app.patches_list),
        ("DELETE", "patches/{name}", app.patches_remove),
        ("POST", "patches/save", app.patches_save),
        ("POST", "query", app.query), ("GET", "info", app.info),
    ]
    routes = [Route("/v1/health", ep(app.health), methods=["GET"]),
              Route("/health", ep(app.health), methods=["GET"]),
              Route("/v1/models", ep(app.models), methods=["GET"]),
              Route("/openapi.json", ep(app.openapi), methods=["GET"]),
              Route("/v1/completions", ep(app.completions), methods=["POST"]),
              Route("/v1/chat/completions", ep(app.chat_completions), methods=["POST"])]
    for method, name, fn in table:
        routes.append(Route(f"/v1/{name}", ep(fn), methods=[method]))
    for method, name, fn in table:
        routes.append(Route("/v1/{model_id}/" + name, ep(fn), methods=[method]))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        msg = "no such endpoint (GET /openapi.json lists them)" if status == 404 else \
            "method not allowed for this endpoint"
        return _err(status, msg)

    star = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    return Guard(star, app), app
