"""``lql serve`` and ``USE REMOTE``: a served vindex answers exactly what the local one does.

Loopback only: each server listens on 127.0.0.1 on a free port, runs in a daemon
thread (or, for the CLI, a subprocess) and is stopped at the end.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vindex_fixtures import tiny_vindex  # noqa: E402

from lql.errors import ExecutionError, LqlError  # noqa: E402
from lql.server import serve  # noqa: E402
from lql.server.client import RemoteError  # noqa: E402
from lql.server.httpd import MAX_BODY_BYTES  # noqa: E402
from lql.session import Session  # noqa: E402


@pytest.fixture(scope="module")
def vindex_path() -> Path:
    return tiny_vindex("llama", level="inference", dtype="f32")


@pytest.fixture(scope="module")
def server(vindex_path):
    srv = serve(vindex_path, "127.0.0.1", 0, log=None)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def local(vindex_path):
    s = Session()
    s.query(f'USE "{vindex_path}"')
    return s


@pytest.fixture
def remote(server):
    s = Session()
    r = s.query(f'USE REMOTE "{server.url}"')
    assert r.statement == "USE REMOTE" and s.remote is not None
    return s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(server, method: str, path: str, body: bytes | None = None, headers=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), json.loads(resp.read())
    finally:
        conn.close()


def _post(server, payload) -> tuple[int, object]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, ctype, data = _http(server, "POST", "/query", body,
                                {"Content-Type": "application/json"})
    assert ctype.startswith("application/json")
    return status, data


def _same(local_result, remote_result, url):
    """Equal results: everything but timing, plus meta.remote on the remote side."""
    a, b = local_result.to_dict(), remote_result.to_dict()
    assert b["meta"].pop("remote") == url
    for d in (a, b):
        d["meta"].pop("elapsed_ms", None)
    assert b == a


# --------------------------------------------------------------------------- USE REMOTE parity

PARITY = [
    'WALK "Paris" TOP 5',
    'WALK "The capital of France" TOP 3 LAYERS 0-1',
    'EXPLAIN WALK "Paris" TOP 3',
    'DESCRIBE "France"',
    'DESCRIBE "France" ALL LAYERS VERBOSE',
    'INFER "The capital of France is" TOP 5',
    'INFER "The capital of France is" TOP 3 RAW',
    'EXPLAIN INFER "The capital of France is" TOP 3',
    'TRACE "The capital of France is"',
    'STATS',
    'SHOW LAYERS',
    'SHOW FEATURES 1 LIMIT 5',
    'SELECT * FROM FEATURES LIMIT 5',
]


@pytest.mark.parametrize("text", PARITY)
def test_remote_statement_equals_local(text, local, remote, server):
    want = local.query(text)
    got = remote.query(text)
    assert want.kind == "table" and want.rows, want    # a real answer, not an empty one
    _same(want, got, server.url)


def test_use_remote_reports_the_served_vindex(remote, server, vindex_path):
    index = json.loads((vindex_path / "index.json").read_text())
    r = remote.last_result
    assert r.meta["url"] == server.url
    assert (r.meta["model"], r.meta["family"], r.meta["num_layers"], r.meta["dtype"],
            r.meta["extract_level"]) == (index["model"], index["family"], index["num_layers"],
                                         index["dtype"], index["extract_level"])
    assert remote.vindex is None                     # nothing local is browsed any more


def test_chat_mode_travels_with_each_query(local, remote):
    text = 'INFER "The capital of France is" TOP 3'
    assert remote.query(text).meta["chat_wrapped"] is True      # AUTO + chat template
    remote.query("SET CHAT OFF")
    got = remote.query(text)
    assert got.meta["chat_wrapped"] is False
    local.query("SET CHAT OFF")
    try:
        want = local.query(text)
    finally:
        local.query("SET CHAT AUTO")
    assert got.to_dict()["rows"] == want.to_dict()["rows"]
    fresh = Session()                                 # the server kept no chat state
    fresh.query(f'USE REMOTE "{remote.remote.url}"')
    assert fresh.query(text).meta["chat_wrapped"] is True


def test_pipe_runs_both_sides_remotely(remote, server):
    results = remote.execute('STATS |> SHOW LAYERS')
    assert [r.statement for r in results] == ["STATS", "SHOW LAYERS"]
    assert all(r.meta["remote"] == server.url for r in results)


def test_local_statements_still_run_locally(remote):
    assert remote.query("HELP USE").kind == "text"
    assert "remote" not in remote.query("SET CHAT ON").meta
    assert remote.remote is not None


@pytest.mark.parametrize("text", [
    'INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", "Poseidonia")',
    'DELETE FROM EDGES WHERE entity = "France"',
    'UPDATE EDGES SET target = "Lyon" WHERE entity = "France"',
    'BEGIN PATCH "x.vlp"',
    'APPLY PATCH "x.vlp"',
    'COMPILE CURRENT INTO VINDEX "out.vindex"',
    'DIFF "a.vindex" CURRENT',
    'TRACE "The capital of France is" SAVE "t.npz"',
])
def test_mutations_in_remote_mode_are_refused_locally(text, remote, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("a refused statement must not reach the server")
    monkeypatch.setattr(remote.remote, "query", no_network)
    with pytest.raises(ExecutionError, match="local vindex") as err:
        remote.query(text)
    assert remote.remote.url in str(err.value)
    assert remote.remote is not None                  # still remote


def test_use_local_path_leaves_remote_mode(remote, vindex_path):
    r = remote.query(f'USE "{vindex_path}"')
    assert r.statement == "USE" and remote.remote is None and remote.vindex is not None
    assert "remote" not in remote.query("STATS").meta


def test_failed_use_keeps_remote_mode(remote, tmp_path):
    with pytest.raises(LqlError, match="no such vindex"):
        remote.query(f'USE "{tmp_path / "missing.vindex"}"')
    assert remote.remote is not None


def test_server_error_is_a_clear_remote_error(local, remote, server):
    with pytest.raises(LqlError) as here:
        local.query("SHOW FEATURES 99")
    with pytest.raises(RemoteError) as there:
        remote.query("SHOW FEATURES 99")
    assert str(there.value) == f"{here.value} (remote vindex at {server.url})"
    assert there.value.remote_type == type(here.value).__name__


def test_unreachable_url_is_one_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    s = Session()
    with pytest.raises(RemoteError) as err:
        s.query(f'USE REMOTE "{url}"')
    msg = str(err.value)
    assert msg.startswith(f"cannot reach the lql server at {url}") and "\n" not in msg
    assert s.remote is None


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://127.0.0.1/x", "http://"])
def test_bad_url_is_refused(url):
    with pytest.raises(RemoteError, match="http:// URL"):
        Session().query(f'USE REMOTE "{url}"')


def test_a_server_that_is_not_lql_is_named():
    class Html(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Html)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.raises(RemoteError, match="did not answer like an lql server"):
            Session().query(f'USE REMOTE "{url}"')
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_cli_json_over_remote(server, capsys):
    from lql.cli import main
    rc = main(["--format", "json", "-e", f'USE REMOTE "{server.url}"; STATS; WALK "Paris" TOP 2'])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [d["statement"] for d in data] == ["USE REMOTE", "STATS", "WALK"]
    assert data[1]["meta"]["remote"] == server.url and len(data[2]["rows"]) == 3 * 2


# --------------------------------------------------------------------------- the HTTP surface

def test_health_and_info(server, vindex_path):
    import lql
    status, _, health = _http(server, "GET", "/health")
    assert status == 200 and health == {"status": "ok", "lql": lql.__version__}
    status, _, info = _http(server, "GET", "/info")
    index = json.loads((vindex_path / "index.json").read_text())
    assert status == 200 and info["read_only"] is True
    for key in ("model", "family", "num_layers", "hidden_size", "vocab_size", "dtype",
                "extract_level"):
        assert info[key] == index[key], key
    assert info["layers"] == sorted(e["layer"] for e in index["layers"])


def test_query_endpoint_returns_the_result_contract(server, local):
    status, data = _post(server, {"lql": 'STATS; WALK "Paris" TOP 2'})
    assert status == 200 and [d["statement"] for d in data] == ["STATS", "WALK"]
    assert set(data[0]) == {"statement", "kind", "columns", "rows", "message", "meta"}
    assert data[0]["rows"] == local.query("STATS").to_dict()["rows"]


@pytest.mark.parametrize("text", [
    'USE "/etc"',
    'USE MODEL "smollm2"',
    'USE REMOTE "http://127.0.0.1:1"',
    'EXTRACT MODEL "x" INTO "y.vindex"',
    'INSERT INTO EDGES (entity, relation, target) VALUES ("A", "r", "B")',
    'DELETE FROM EDGES WHERE entity = "France"',
    'UPDATE EDGES SET target = "Lyon" WHERE entity = "France"',
    'BEGIN PATCH "x.vlp"',
    'SAVE PATCH',
    'APPLY PATCH "x.vlp"',
    'COMPILE CURRENT INTO VINDEX "out.vindex"',
    'DIFF "a.vindex" CURRENT',
    'TRACE "x" SAVE "t.npz"',
    'SET CHAT OFF',
    'SHOW MODELS',
    'STATS "/etc"',
    'STATS |> DELETE FROM EDGES WHERE entity = "France"',
    'STATS; DELETE FROM EDGES WHERE entity = "France"',
])
def test_server_refuses_statements_that_write_or_leave_the_vindex(text, server):
    status, data = _post(server, {"lql": text})
    assert status == 403
    assert len(data) == 1 and data[0]["kind"] == "error" and data[0]["message"]
    assert data[0]["meta"]["error_type"] == "RefusedError"
    status, stats = _post(server, {"lql": "STATS"})   # and nothing changed
    assert status == 200 and stats[0]["rows"][0]["patches"] == 0


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b'["STATS"]', 400, "JSON object"),
    (b'{"lql": 3}', 400, "JSON object"),
    (b'{"lql": "STATS", "user": "x"}', 400, "unknown field"),
    (b'{"lql": "STATS", "chat": "MAYBE"}', 400, '"chat" must be'),
    (b'{"lql": "WALK"}', 400, "syntax error"),
    (b'{"lql": "  -- nothing"}', 400, "no statement"),
    (b'{"lql": "SHOW FEATURES 99"}', 400, "99"),
])
def test_bad_requests_get_error_json(server, body, status, needle):
    got, data = _post(server, body)
    assert got == status
    assert data[-1]["kind"] == "error" and needle in data[-1]["message"]
    assert "Traceback" not in json.dumps(data)


def test_oversize_body_is_refused_unread(server):
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode() + b'{"lql": "')
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"413"
    data = json.loads(body)
    assert data[0]["kind"] == "error" and str(MAX_BODY_BYTES) in data[0]["message"]


def test_unknown_endpoint_and_method(server):
    status, _, data = _http(server, "GET", "/nope")
    assert status == 404 and data[0]["kind"] == "error"
    status, _, data = _http(server, "GET", "/query")
    assert status == 405 and "POST" in data[0]["message"]
    status, _, data = _http(server, "PUT", "/query", b"{}")
    assert status == 501 and data[0]["kind"] == "error"


def test_concurrent_queries_match_serial_ones(server, local):
    texts = ['WALK "Paris" TOP 4', 'DESCRIBE "France"', 'INFER "The capital of France is" TOP 3']
    want = {t: local.query(t).to_dict()["rows"] for t in texts}

    def ask(t):
        status, data = _post(server, {"lql": t})
        assert status == 200
        return t, data[0]["rows"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        for t, rows in pool.map(ask, texts * 4):
            assert rows == want[t], t


# --------------------------------------------------------------------------- the subcommand

def _start_cli(vindex_path, lql_env, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "lql", "serve", str(vindex_path),
                             "--host", "127.0.0.1", "--port", "0"],
                            cwd=tmp_path, env=lql_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()                  # the banner names the URL
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if m is None:
        proc.kill()
        raise AssertionError(f"no URL in the banner: {line!r} {proc.communicate(timeout=10)}")
    return proc, f"http://127.0.0.1:{m.group(1)}"


def _has_serve_extra() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn"))


@pytest.mark.skipif(not _has_serve_extra(), reason="lql serve needs the serve extra")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_lql_serve_subcommand(stop, vindex_path, lql_env, tmp_path, local):
    proc, url = _start_cli(vindex_path, lql_env, tmp_path)
    try:
        import urllib.request
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url + "/health", timeout=30) as resp:
            assert json.loads(resp.read())["status"] == "ok"
        s = Session()
        s.query(f'USE REMOTE "{url}"')
        _same(local.query('WALK "Paris" TOP 3'), s.query('WALK "Paris" TOP 3'), url)
    finally:
        proc.send_signal(stop)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "lql serve: stopped" in err and "Traceback" not in err


def test_lql_serve_needs_a_vindex(lql_env, tmp_path):
    p = subprocess.run([sys.executable, "-m", "lql", "serve"], cwd=tmp_path, env=lql_env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "needs the PATH of a vindex" in p.stderr
    p = subprocess.run([sys.executable, "-m", "lql", "serve", "missing.vindex", "--port", "0"],
                       cwd=tmp_path, env=lql_env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "no such vindex" in p.stderr and "Traceback" not in p.stderr
