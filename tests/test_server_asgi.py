"""The ASGI vindex server (``lql serve``): LARQL's /v1 contract, keys, sessions, limits.

Loopback only: each server is uvicorn on 127.0.0.1, a free port, in a daemon thread,
stopped at the end. Needs the ``serve`` extra (skipped without it).

The expected field sets are written from LARQL's Rust handlers
(Divinci-AI/larql, ``crates/larql-server/src/routes/``; file:line cited at each one),
not from our own code, so a renamed or missing field fails here.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vindex_fixtures import tiny_vindex  # noqa: E402

from lql.server.app import ModelHost, ServeConfig, _Pool  # noqa: E402
from lql.server.asgi_serve import ServerThread  # noqa: E402
from lql.server.guard import GuardError, json_depth_ok, key_matches  # noqa: E402
from lql.server.sessions import SessionStore  # noqa: E402

KEY = "t0ken-for-tests"
LOGS: list[str] = []


@pytest.fixture(scope="module")
def vindex_path() -> Path:
    return tiny_vindex("llama", level="inference", dtype="f32")


@pytest.fixture(scope="module")
def patch_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("allowed-patches")
    return d


@pytest.fixture(scope="module")
def host(vindex_path) -> ModelHost:
    h = ModelHost("tiny", vindex_path)
    h.warmup()
    return h


@pytest.fixture(scope="module")
def srv(host, patch_dir):
    cfg = ServeConfig(port=0, api_key=KEY, patch_dirs=[patch_dir], header_timeout_s=2.0,
                      body_timeout_s=2.0, max_body_bytes=64 * 1024, log=LOGS.append,
                      max_generate=4000, timeout_s=60)
    t = ServerThread([host], cfg).start()
    try:
        yield t
    finally:
        t.stop()


def call(srv, method, path, body=None, *, key=KEY, sid=None, headers=None, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    h = {"Content-Type": "application/json"} if (body is not None or raw is not None) else {}
    if key:
        h["Authorization"] = f"Bearer {key}"
    if sid:
        h["X-Session-Id"] = sid
    h.update(headers or {})
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        text = r.read()
        try:
            doc = json.loads(text) if text else None
        except ValueError:
            doc = text.decode("utf-8", "replace")
        return r.status, doc
    finally:
        conn.close()


def alive(srv) -> None:
    """The server still answers."""
    status, doc = call(srv, "GET", "/v1/health", key=None)
    assert status == 200 and doc["status"] == "ok"


# --------------------------------------------------------------------------- contract
# LARQL field sets (crates/larql-server/src/routes/…), always-present fields only.
WALK_RESPONSE = {"prompt", "hits", "latency_ms"}                   # walk.rs:87-91
WALK_HIT = {"layer", "feature", "gate_score", "target"}           # walk.rs:71-76 (+relation :77-79)
DESCRIBE_RESPONSE = {"entity", "model", "edges", "latency_ms"}     # describe.rs:200-205
DESCRIBE_EDGE = {"target", "gate_score", "layer"}                 # describe.rs:172-176
DESCRIBE_VERBOSE = {"layer_max", "layer_min", "count"}            # describe.rs:184-188
SELECT_RESPONSE = {"edges", "total", "latency_ms"}                 # select.rs:137-141
SELECT_EDGE = {"layer", "feature", "target", "c_score"}           # select.rs:122-127
RELATIONS_RESPONSE = {"relations", "probe_relations", "probe_count", "total",
                      "latency_ms"}                                # relations.rs:177-183
STATS_RESPONSE = {"model", "family", "mode", "layers", "features", "features_per_layer",
                  "hidden_size", "vocab_size", "extract_level", "dtype", "layer_bands",
                  "loaded"}                                        # stats.rs:40-58
STATS_LOADED = {"browse", "inference", "ffn_service", "embed_service"}   # stats.rs:52-57
HEALTH_RESPONSE = {"status", "uptime_seconds", "requests_served"}  # health.rs:19-23
MODEL_ENTRY = {"id", "path", "features", "loaded"}                 # models.rs:20-29
INFER_WALK = {"prompt", "predictions", "mode", "latency_ms"}       # infer.rs:75,124-125,160
INFER_COMPARE = {"prompt", "walk", "walk_ms", "dense", "dense_ms", "latency_ms"}  # infer.rs:121-122,151-152
PREDICTION = {"token", "probability"}                              # infer.rs:113-116
EXPLAIN_RESPONSE = {"prompt", "predictions", "trace", "latency_ms"}   # explain.rs:197-202
EXPLAIN_LAYER = {"layer", "features"}                               # explain.rs:178-181
EXPLAIN_FEATURE = {"feature", "gate_score", "top_token", "top_tokens", "relation"}  # explain.rs:167-173
INSERT_RESPONSE = {"entity", "relation", "target", "inserted", "mode", "alpha", "session",
                   "latency_ms"}                                   # insert.rs:219-228
APPLY_RESPONSE = {"applied", "operations", "active_patches", "session"}   # patches.rs:142-147
LIST_RESPONSE = {"patches", "session"}                             # patches.rs:190-193
PATCH_ENTRY = {"name", "operations", "base_model"}                 # session.rs:155-159
REMOVE_RESPONSE = {"removed", "active_patches", "session"}         # patches.rs:242-246
ERROR_RESPONSE = {"error"}                                         # error.rs:31


def has(doc, fields, where):
    assert isinstance(doc, dict), (where, doc)
    missing = fields - set(doc)
    assert not missing, f"{where}: missing {sorted(missing)} in {sorted(doc)}"


def test_contract_health_models_stats(srv, host):
    s, d = call(srv, "GET", "/v1/health", key=None)
    assert s == 200
    has(d, HEALTH_RESPONSE, "health")
    s, d = call(srv, "GET", "/v1/models")
    assert s == 200 and len(d["models"]) == 1
    has(d["models"][0], MODEL_ENTRY, "models[0]")
    assert d["models"][0]["path"] == "/v1" and d["models"][0]["id"] == "tiny"
    s, d = call(srv, "GET", "/v1/stats")
    assert s == 200
    has(d, STATS_RESPONSE, "stats")
    has(d["loaded"], STATS_LOADED, "stats.loaded")
    assert d["layers"] == host.num_layers and d["features"] == host.features
    # the per-model prefix answers the same
    s2, d2 = call(srv, "GET", "/v1/tiny/stats")
    assert s2 == 200 and d2 == d


def test_contract_walk(srv):
    s, d = call(srv, "GET", "/v1/walk?prompt=Paris&top=3&layers=0-1")
    assert s == 200
    has(d, WALK_RESPONSE, "walk")
    assert d["hits"] and {h["layer"] for h in d["hits"]} <= {0, 1}
    for h in d["hits"]:
        has(h, WALK_HIT, "walk.hits[]")
    # a,b,c form: only the listed layers
    s, d = call(srv, "GET", "/v1/walk?prompt=Paris&top=2&layers=1")
    assert s == 200 and {h["layer"] for h in d["hits"]} == {1}


def test_contract_describe(srv):
    s, d = call(srv, "GET", "/v1/describe?entity=France&band=all&verbose=true&min_score=-100")
    assert s == 200
    has(d, DESCRIBE_RESPONSE, "describe")
    assert d["edges"], d
    for e in d["edges"]:
        has(e, DESCRIBE_EDGE | DESCRIBE_VERBOSE, "describe.edges[]")
    s, d = call(srv, "GET", "/v1/describe?entity=France&band=all&limit=1&min_score=-100")
    assert s == 200 and len(d["edges"]) == 1 and "count" not in d["edges"][0]


def test_contract_select_relations(srv):
    s, d = call(srv, "POST", "/v1/select", {"limit": 3})
    assert s == 200, d
    has(d, SELECT_RESPONSE, "select")
    for e in d["edges"]:
        has(e, SELECT_EDGE, "select.edges[]")
    s, d = call(srv, "GET", "/v1/relations")
    assert s == 200
    has(d, RELATIONS_RESPONSE, "relations")


def test_contract_infer(srv):
    s, d = call(srv, "POST", "/v1/infer", {"prompt": "The capital of France is", "top": 3})
    assert s == 200, d
    has(d, INFER_WALK, "infer")
    assert d["mode"] == "walk" and len(d["predictions"]) == 3
    for p in d["predictions"]:
        has(p, PREDICTION, "infer.predictions[]")
    s, d = call(srv, "POST", "/v1/infer", {"prompt": "The capital of France is", "top": 2,
                                           "mode": "compare"})
    assert s == 200
    has(d, INFER_COMPARE, "infer compare")
    s, d = call(srv, "POST", "/v1/infer", {"prompt": "x", "mode": "dense"})
    assert s == 200 and d["mode"] == "dense"


def test_contract_explain(srv):
    s, d = call(srv, "POST", "/v1/explain-infer", {"prompt": "The capital of France is",
                                                   "per_layer": 2})
    assert s == 200, d
    has(d, EXPLAIN_RESPONSE, "explain")
    assert d["trace"]
    for layer in d["trace"]:
        has(layer, EXPLAIN_LAYER, "explain.trace[]")
        assert 0 < len(layer["features"]) <= 2
        for f in layer["features"]:
            has(f, EXPLAIN_FEATURE, "explain.trace[].features[]")


def test_contract_errors(srv):
    s, d = call(srv, "GET", "/v1/walk")                       # no prompt
    assert s == 400
    has(d, ERROR_RESPONSE, "error")
    s, d = call(srv, "GET", "/v1/nope")
    assert s == 404
    has(d, ERROR_RESPONSE, "error")


# --------------------------------------------------------------------------- sessions, writes
def _walk_features(srv, sid=None):
    s, d = call(srv, "GET", "/v1/walk?prompt=Paris&top=5&layers=1", sid=sid)
    assert s == 200
    return {(h["layer"], h["feature"]) for h in d["hits"]}


def test_patch_in_one_session_only(srv, vindex_path):
    before_files = {p: p.stat().st_mtime_ns for p in vindex_path.iterdir()}
    base = _walk_features(srv)
    layer, feature = sorted(base)[0]
    patch = {"version": 1, "base_model": None, "created_at": "2026-04-20T00:00:00Z",
             "operations": [{"op": "delete", "entity": "Paris", "relation": "capital",
                             "target": "x", "layer": layer, "feature": feature}]}
    s, d = call(srv, "POST", "/v1/patches/apply", {"name": "del-one", "patch": patch},
                sid="sess-a")
    assert s == 200, d
    has(d, APPLY_RESPONSE, "patches/apply")
    assert d == {"applied": "del-one", "operations": 1, "active_patches": 1, "session": "sess-a"}
    assert (layer, feature) not in _walk_features(srv, "sess-a")
    assert (layer, feature) in _walk_features(srv, "sess-b")        # another session
    assert (layer, feature) in _walk_features(srv)                  # the shared view
    s, d = call(srv, "GET", "/v1/patches", sid="sess-a")
    has(d, LIST_RESPONSE, "patches")
    has(d["patches"][0], PATCH_ENTRY, "patches[]")
    assert d["patches"][0]["name"] == "del-one"
    s, d = call(srv, "DELETE", "/v1/patches/del-one", sid="sess-a")
    assert s == 200
    has(d, REMOVE_RESPONSE, "patches/{name}")
    assert d["active_patches"] == 0
    assert (layer, feature) in _walk_features(srv, "sess-a")
    assert {p: p.stat().st_mtime_ns for p in vindex_path.iterdir()} == before_files


def test_shared_view_is_read_only(srv):
    s, d = call(srv, "POST", "/v1/insert", {"entity": "Atlantis", "relation": "capital",
                                            "target": "Paris"})
    assert s == 403 and "X-Session-Id" in d["error"]
    s, d = call(srv, "POST", "/v1/query", {"lql": 'DELETE FROM EDGES WHERE layer = 0 AND feature = 1'})
    assert s == 403


def test_insert_and_save_in_session(srv):
    s, d = call(srv, "POST", "/v1/insert", {"entity": "Atlantis", "relation": "capital",
                                            "target": "Paris", "layer": 1}, sid="writer")
    assert s == 200, d
    has(d, INSERT_RESPONSE, "insert")
    assert d["inserted"] >= 1 and d["session"] == "writer"
    s, d = call(srv, "POST", "/v1/patches/save", {"name": "atlantis"}, sid="writer")
    assert s == 200, d
    assert d["operations"] >= 1 and d["patch"]["operations"][0]["op"].startswith("insert")
    # the query endpoint in a session: the edit is visible there only
    s, d = call(srv, "POST", "/v1/query", {"lql": "SHOW PATCHES"}, sid="writer")
    assert s == 200 and d[0]["rows"]
    s, d = call(srv, "POST", "/v1/query", {"lql": "SHOW PATCHES"})
    assert s == 200 and not d[0]["rows"]


def test_session_store_ttl_and_cap(host, tmp_path):
    st = SessionStore(tmp_path, ttl_s=1000, cap=1)
    st.get("m", "one", host.vindex)
    with pytest.raises(GuardError) as e:
        st.get("m", "two", host.vindex)
    assert e.value.status == 503
    st.ttl_s = -1                                   # everything idle is now expired
    assert st.expire() == 1 and len(st) == 0
    st.get("m", "two", host.vindex)
    with pytest.raises(GuardError) as e:
        st.get("m", "../evil", host.vindex)
    assert e.value.status == 400


def test_pool_queue_limit():
    import asyncio
    import threading
    gate = threading.Event()

    async def go():
        pool = _Pool("t", 1, 1)
        f1 = pool.submit(gate.wait)
        f2 = pool.submit(gate.wait)
        with pytest.raises(GuardError) as e:
            pool.submit(gate.wait)
        gate.set()
        await asyncio.wrap_future(f1)
        await asyncio.wrap_future(f2)
        await asyncio.sleep(0.05)
        return e.value.status, pool.admitted
    assert asyncio.run(go()) == (503, 0)


# --------------------------------------------------------------------------- security
@pytest.mark.parametrize("path", ["/v1/walk?prompt=a", "/v1/stats", "/v1/models",
                                  "/openapi.json", "/v1/patches"])
def test_key_required(srv, path):
    assert call(srv, "GET", path, key=None)[0] == 401
    assert call(srv, "GET", path, key="wrong")[0] == 401
    assert call(srv, "GET", path)[0] == 200
    alive(srv)


def test_key_compare():
    assert key_matches("Bearer abc", "abc")
    assert not key_matches("Bearer abd", "abc") and not key_matches("abc", "abc")
    assert not key_matches(None, "abc") and not key_matches("Basic abc", "abc")


def test_path_traversal(srv, patch_dir, tmp_path):
    outside = tmp_path / "outside.vlp"
    outside.write_text(json.dumps({"version": 1, "operations": []}))
    cases = [
        ("POST", "/v1/patches/apply", {"url": "/etc/passwd"}, "s1", 403),
        ("POST", "/v1/patches/apply", {"url": str(outside)}, "s1", 403),
        ("POST", "/v1/patches/apply", {"url": f"{patch_dir}/../{outside.parent.name}/outside.vlp"},
         "s1", 403),
        ("POST", "/v1/patches/apply", {"url": f"file://{outside}"}, "s1", 403),
        ("POST", "/v1/patches/apply", {"url": "http://example.com/p.vlp"}, "s1", 403),
        ("POST", "/v1/patches/apply", {"url": "hf://someone/vindex"}, "s1", 403),
        ("POST", "/v1/patches/apply", {"url": "../../etc/passwd"}, "s1", 403),
        ("DELETE", "/v1/patches/..%2F..%2Fetc%2Fpasswd", None, "s1", 404),
        ("GET", "/v1/walk?prompt=a", None, "../../etc", 400),
        ("GET", "/v1/..%2F..%2Fetc/stats", None, None, 404),
        ("POST", "/v1/query", {"lql": 'STATS "/etc"'}, None, 403),
        ("POST", "/v1/query", {"lql": 'APPLY PATCH "/etc/passwd"'}, "s1", 403),
        ("POST", "/v1/query", {"lql": 'SAVE PATCH "/tmp/x.vlp"'}, "s1", 403),
        ("POST", "/v1/query", {"lql": 'USE "/etc"'}, "s1", 403),
        ("POST", "/v1/query", {"lql": 'TRACE "a" SAVE "/tmp/t.npz"'}, None, 403),
    ]
    for method, path, body, sid, want in cases:
        s, d = call(srv, method, path, body, sid=sid)
        assert s == want, (method, path, body, sid, s, d)
        text = json.dumps(d)
        assert str(tmp_path) not in text and "/etc/passwd" not in text.replace(
            '"url": "/etc/passwd"', ""), text
    # a name with separators never leaves the session folder
    s, d = call(srv, "POST", "/v1/patches/apply",
                {"name": "../../escaped", "patch": {"version": 1, "operations": []}}, sid="s2")
    assert s == 200 and d["applied"] == "../../escaped"
    assert not list(Path(srv.state.sessions.root).parent.glob("escaped*"))
    # an allow-listed file loads
    ok = patch_dir / "empty.vlp"
    ok.write_text(json.dumps({"version": 1, "operations": []}))
    s, d = call(srv, "POST", "/v1/patches/apply", {"url": str(ok)}, sid="s3")
    assert s == 200 and d["applied"] == str(ok)
    alive(srv)


def test_bodies(srv):
    big = b'{"lql": "' + b"x" * (70 * 1024) + b'"}'
    assert call(srv, "POST", "/v1/query", raw=big)[0] == 413
    assert call(srv, "POST", "/v1/query", raw=b"{not json")[0] == 400
    assert call(srv, "POST", "/v1/query", raw=b"[" * 60000)[0] == 400     # nesting
    assert call(srv, "POST", "/v1/query", raw=b"\xff\xfe")[0] == 400
    assert call(srv, "POST", "/v1/query", raw=b'["a"]')[0] == 400         # not an object
    s, d = call(srv, "POST", "/v1/query", raw=b'{"lql": "STATS"}',
                headers={"Content-Type": "text/plain"})
    assert s == 415
    pipe = " |> ".join(['WALK "a" TOP 1'] * 1000)
    s, d = call(srv, "POST", "/v1/query", {"lql": pipe})
    assert s == 400, d
    s, d = call(srv, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 10 ** 6})
    assert s == 400 and "max_tokens" in d["error"]
    s, d = call(srv, "POST", "/v1/infer", {"prompt": "a " * 5000})
    assert s == 413
    alive(srv)


def test_host_and_origin(srv):
    assert call(srv, "GET", "/v1/stats", headers={"Host": "evil.example"})[0] == 403
    assert call(srv, "GET", "/v1/stats", headers={"Origin": "http://evil.example"})[0] == 403
    assert call(srv, "GET", "/v1/stats",
                headers={"Origin": f"http://127.0.0.1:{srv.port}"})[0] == 200
    alive(srv)


def test_slowloris_dropped(srv):
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.settimeout(10)
    sock.sendall(b"GET /v1/health HTTP/1.1\r\n")
    t0 = time.monotonic()
    closed = False
    try:
        for _ in range(20):                 # one header byte a second, never finishing
            alive(srv)                      # the server keeps serving others meanwhile
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.5)
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    finally:
        sock.close()
    assert closed, "a connection that never finished its headers was kept open"
    assert time.monotonic() - t0 < 15
    assert any("too slowly" in line for line in LOGS)
    # a slow body: the whole-request deadline answers 408
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.settimeout(10)
    sock.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
                 KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{")
    head = sock.recv(200)
    sock.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    alive(srv)


def test_disconnect_mid_stream(srv):
    n_before = sum("disconnected" in line for line in LOGS)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("POST", "/v1/completions",
                 body=json.dumps({"prompt": "Once upon a time", "max_tokens": 3000,
                                  "stream": True}),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    first = r.readline()
    assert first.startswith(b"data: ")
    conn.sock.close()                       # gone mid-stream
    conn.close()
    t0 = time.monotonic()
    # the next generation runs: the cancelled one no longer holds the generate worker
    s, d = call(srv, "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    assert s == 200, d
    assert d["object"] == "text_completion" and d["choices"][0]["finish_reason"] in (
        "length", "stop")
    assert time.monotonic() - t0 < 50
    for _ in range(100):
        if sum("disconnected" in line for line in LOGS) > n_before:
            break
        time.sleep(0.05)
    lines = [line for line in LOGS if "disconnected" in line]
    assert len(lines) > n_before and "\n" not in lines[-1] and "Traceback" not in lines[-1]
    alive(srv)


def test_chat_completion_and_stream_shape(srv):
    s, d = call(srv, "POST", "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    assert s == 200, d
    assert d["object"] == "chat.completion" and d["choices"][0]["message"]["role"] == "assistant"
    assert set(d["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    lines = [ln for ln in conn.getresponse().read().decode().splitlines() if ln]
    conn.close()
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_openapi(srv):
    s, d = call(srv, "GET", "/openapi.json")
    assert s == 200 and d["openapi"].startswith("3.")
    for p in ("/v1/walk", "/v1/describe", "/v1/patches/{name}", "/v1/completions",
              "/v1/chat/completions", "/v1/query", "/v1/{model_id}/walk"):
        assert p in d["paths"], p


def test_json_depth():
    assert json_depth_ok(b'{"a": [[1]]}', 3)
    assert not json_depth_ok(b'{"a": [[[1]]]}', 3)
    assert json_depth_ok(b'{"a": "[[[[[["}', 2)          # brackets in strings do not count


def test_serve_without_extra_says_what_to_install(monkeypatch, capsys, tmp_path):
    import builtins

    from lql.server import serve_cli
    real = builtins.__import__

    def fake(name, *a, **k):
        if name in ("starlette", "uvicorn") or name.startswith("starlette."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    for m in [m for m in sys.modules if m in ("lql.server.app", "lql.server.asgi_serve")]:
        monkeypatch.delitem(sys.modules, m)
    import argparse
    ns = argparse.Namespace(path=[str(tmp_path)], legacy=False)   # exists: the extra is next
    assert serve_cli.cli_serve(ns) == 1
    assert "pip install 'lql[serve]'" in capsys.readouterr().err


def test_non_loopback_without_key_refused(capsys, tmp_path):
    from lql.cli import main
    rc = main(["serve", str(tmp_path), "--host", "0.0.0.0"])    # refused before it is opened
    assert rc == 2
    assert "--insecure-no-key" in capsys.readouterr().err


# --------------------------------------------------------------------------- USE REMOTE
@pytest.fixture
def remote_env(monkeypatch):
    monkeypatch.setenv("LQL_API_KEY", KEY)


def test_use_remote_detects_lql_v1_and_matches_local(srv, vindex_path, remote_env):
    from lql.session import Session
    local = Session()
    local.query(f'USE "{vindex_path}"')
    s = Session()
    s.query(f'USE REMOTE "{srv.url}"')
    assert s.remote.protocol == "lql" and s.remote.session_id
    for q in ('WALK "Paris" TOP 3', 'DESCRIBE "France"', 'INFER "The capital of France is" TOP 3'):
        a, b = local.query(q).to_dict(), s.query(q).to_dict()
        for d in (a, b):
            d["meta"].pop("elapsed_ms", None)
            d["meta"].pop("remote", None)
        assert a == b, q


def test_use_remote_writes_go_to_the_session_overlay(srv, remote_env, tmp_path):
    from lql.session import Session
    a, b = Session(), Session()
    a.query(f'USE REMOTE "{srv.url}"')
    b.query(f'USE REMOTE "{srv.url}"')
    hits = a.query('WALK "Paris" TOP 5 LAYERS 1').rows
    layer, feature = hits[0]["layer"], hits[0]["feature"]
    a.query(f"DELETE FROM EDGES WHERE layer = {layer} AND feature = {feature}")
    assert (layer, feature) not in {(r["layer"], r["feature"])
                                    for r in a.query('WALK "Paris" TOP 5 LAYERS 1').rows}
    assert (layer, feature) in {(r["layer"], r["feature"])
                                for r in b.query('WALK "Paris" TOP 5 LAYERS 1').rows}
    # a local patch file travels inline; REMOVE PATCH takes it off again
    p = tmp_path / "drop.vlp"
    p.write_text(json.dumps({"version": 1, "operations": [
        {"op": "delete", "layer": layer, "feature": feature}]}))
    b.query(f'APPLY PATCH "{p}"')
    assert (layer, feature) not in {(r["layer"], r["feature"])
                                    for r in b.query('WALK "Paris" TOP 5 LAYERS 1').rows}
    assert b.query("SHOW PATCHES").rows
    b.query(f'REMOVE PATCH "{p}"')
    assert (layer, feature) in {(r["layer"], r["feature"])
                                for r in b.query('WALK "Paris" TOP 5 LAYERS 1').rows}


def test_use_remote_larql_protocol(srv):
    """The LARQL dialect (REST calls, LARQL's field names), spoken to our server's
    LARQL-compatible endpoints."""
    import uuid

    from lql.remote.client import RemoteVindex
    from lql.session import Session
    s = Session()
    s.use_remote(RemoteVindex(srv.url, {}, protocol="larql", api_key=KEY,
                              session_id="larql-" + uuid.uuid4().hex[:8]))
    r = s.query('WALK "Paris" TOP 3 LAYERS 0-1')
    assert r.rows and WALK_HIT <= set(r.columns)
    r = s.query('INFER "The capital of France is" TOP 3')
    assert len(r.rows) == 3 and set(r.columns) == PREDICTION
    r = s.query("STATS")
    assert STATS_RESPONSE <= set(r.columns)
    r = s.query('DESCRIBE "France"')
    assert r.kind == "table"
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", '
                '"Paris") AT LAYER 1')
    assert r.rows[0]["inserted"] >= 1 and r.rows[0]["session"] == s.remote.session_id
    with pytest.raises(Exception, match="not in a LARQL server's HTTP API"):
        s.query("SHOW LAYERS")


def test_several_models_and_a_time_budget(host, vindex_path):
    """Two vindexes: /v1/{model_id}/…; the unprefixed path asks which. A request past
    its wall-time budget is cancelled (408) and the server goes on."""
    other = ModelHost("tiny-2", vindex_path)
    t = ServerThread([host, other], ServeConfig(port=0, timeout_s=0.01, log=LOGS.append)).start()
    try:
        s, d = call(t, "GET", "/v1/models", key=None)
        assert s == 200 and [m["path"] for m in d["models"]] == ["/v1/tiny", "/v1/tiny-2"]
        s, d = call(t, "GET", "/v1/walk?prompt=Paris", key=None)
        assert s == 404 and "/v1/{model_id}/" in d["error"]
        s, d = call(t, "POST", "/v1/tiny-2/query",
                    {"lql": 'INFER "Once upon a time" RAW GENERATE 2000'}, key=None)
        message = d[-1]["message"] if isinstance(d, list) else d["error"]
        assert s == 408 and "wall-time budget" in message
        assert call(t, "GET", "/v1/health", key=None)[0] == 200
    finally:
        t.stop()


def test_generate_does_not_hold_short_requests(srv):
    """While a long generation streams, a WALK is answered and the stream goes on after it
    (GENERATE has its own worker pool)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("POST", "/v1/completions",
                 body=json.dumps({"prompt": "Once upon a time", "max_tokens": 2000,
                                  "stream": True}),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    try:
        assert r.readline().startswith(b"data: ")
        s, d = call(srv, "GET", "/v1/walk?prompt=Paris&top=2")
        assert s == 200 and d["hits"]
        later = [r.readline() for _ in range(4)]
        assert any(ln.startswith(b"data: {") for ln in later), later   # still generating
    finally:
        r.close()
        conn.close()


def test_errors_do_not_disclose_server_paths(srv, vindex_path):
    bad = {"version": 1, "operations": [{"op": "delete", "layer": 9999, "feature": 0}]}
    s, d = call(srv, "POST", "/v1/patches/apply", {"name": "bad", "patch": bad}, sid="leak")
    assert s == 400, d
    text = json.dumps(d)
    assert str(srv.state.sessions.root) not in text and str(vindex_path) not in text, text
    s, d = call(srv, "POST", "/v1/query", {"lql": 'USE "/etc"'})
    assert s == 403 and "/etc" not in json.dumps(d).replace('USE \\"/etc\\"', "")


def test_scrubber():
    from lql.server.guard import Scrubber
    sc = Scrubber({"<vindex:x>": "/srv/models/x.vindex"})
    assert sc("no /srv/models/x.vindex/index.json") == "no <vindex:x>/index.json"
    assert sc("read /etc/ssl/certs failed") == "read <path>/certs failed"
    assert sc("address /v1/{model_id}/walk") == "address /v1/{model_id}/walk"


def test_concurrent_requests_equal_serial_ones(srv):
    from concurrent.futures import ThreadPoolExecutor
    paths = ["/v1/walk?prompt=Paris&top=3", "/v1/describe?entity=France&band=all&min_score=-100",
             "/v1/walk?prompt=France&top=2&layers=0,1"]
    bodies = [{"prompt": "The capital of France is", "top": 3}, {"prompt": "Water", "top": 2}]

    def strip(d):
        d.pop("latency_ms", None)
        return d
    want = {p: strip(call(srv, "GET", p)[1]) for p in paths}
    want_i = {b["prompt"]: strip(call(srv, "POST", "/v1/infer", b)[1]) for b in bodies}

    def ask(i):
        if i % 2:
            b = bodies[i % len(bodies)]
            return ("infer", b["prompt"]), strip(call(srv, "POST", "/v1/infer", b)[1])
        p = paths[i % len(paths)]
        return ("get", p), strip(call(srv, "GET", p)[1])
    with ThreadPoolExecutor(max_workers=8) as pool:
        for (kind, k), got in pool.map(ask, range(24)):
            assert got == (want[k] if kind == "get" else want_i[k]), k
