"""Fuzz worker (run by tests/test_fuzz_files.py in a subprocess under an RLIMIT_AS cap).

``python fuzz_files_worker.py BASE_VINDEX WORKDIR EXAMPLES`` corrupts each file of a
vindex at random (hypothesis), runs USE / WALK / DESCRIBE / APPLY PATCH / INFER over the
result and prints one JSON line: ``{"tried": {file: n}, "failures": [...]}``.  A failure
is any exception that is not an LqlError with a non-empty one-line message.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BASE, WORK, N = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
LIMIT_GB = float(os.environ.get("LQL_FUZZ_AS_GB", "4"))
resource.setrlimit(resource.RLIMIT_AS, (int(LIMIT_GB * (1 << 30)),) * 2)

from lql.errors import LqlError  # noqa: E402
from lql.session import Session  # noqa: E402

tried: dict[str, int] = {}
failures: list[dict] = []

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_value = st.recursive(json_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                           st.dictionaries(st.text(max_size=5), c,
                                                                           max_size=3)),
                          max_leaves=6)


def _copy(files: dict[str, bytes]) -> Path:
    d = WORK / "v"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for p in BASE.iterdir():
        if p.name in files:
            (d / p.name).write_bytes(files[p.name])
        else:
            os.link(p, d / p.name)
    return d


def _run(label: str, stmts: str, detail) -> None:
    tried[label] = tried.get(label, 0) + 1
    try:
        s = Session()
        s.execute(stmts)
    except LqlError as exc:
        msg = str(exc)
        if not msg.strip() or "\n" in msg.strip() and not msg.startswith("syntax"):
            failures.append({"file": label, "error": f"LqlError without a one-line message: "
                                                     f"{msg!r}", "input": repr(detail)[:300]})
    except BaseException as exc:     # noqa: BLE001 — the point of the fuzz
        failures.append({"file": label, "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                         "where": traceback.format_exc().strip().splitlines()[-3:],
                         "input": repr(detail)[:300]})


def _paths(doc, prefix=()):
    """Every (path) into a JSON document, the root included."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()


def json_mutation(name: str):
    doc = json.loads((BASE / name).read_text())
    paths = list(_paths(doc))

    @st.composite
    def strat(draw):
        d = json.loads(json.dumps(doc))
        for _ in range(draw(st.integers(1, 3))):
            cur = list(_paths(d))
            path = draw(st.sampled_from(cur if cur else paths))
            value = draw(st.one_of(json_value, st.just(_DELETE))) if path else draw(json_value)
            try:
                d = _set(d, path, value)
            except (KeyError, IndexError, TypeError):
                pass
        raw = json.dumps(d).encode()
        if draw(st.booleans()) and draw(st.booleans()):       # byte-level damage too
            pos = draw(st.integers(0, max(0, len(raw) - 1)))
            raw = raw[:pos] + draw(st.binary(min_size=1, max_size=4)) + raw[pos + 1:]
        return raw
    return strat()


STMTS = 'USE "{d}"; WALK "Paris" TOP 3; DESCRIBE "France"; INFER "The capital of France is" TOP 2'
CFG = settings(max_examples=N, deadline=None, database=None, derandomize=True,
               suppress_health_check=list(HealthCheck))


def fuzz_json(name: str) -> None:
    @CFG
    @given(json_mutation(name))
    def inner(raw):
        d = _copy({name: raw})
        stmts = STMTS.format(d=d)
        if name == "tokenizer_config.json":
            (d / "chat_template.jinja").unlink(missing_ok=True)
            stmts = f'USE "{d}"; INFER CHAT "The capital of France is" TOP 2'
        _run(name, stmts, raw[:200])
    inner()


def fuzz_down_meta() -> None:
    data = (BASE / "down_meta.bin").read_bytes()

    @CFG
    @given(st.lists(st.tuples(st.integers(0, 16 + 4 + 8 * 12 * 4), st.binary(min_size=1, max_size=4)),
                    min_size=1, max_size=4), st.one_of(st.none(), st.integers(0, len(data))))
    def inner(edits, truncate):
        raw = bytearray(data)
        for pos, b in edits:
            raw[pos:pos + len(b)] = b
        if truncate is not None:
            raw = raw[:truncate]
        d = _copy({"down_meta.bin": bytes(raw)})
        _run("down_meta.bin", STMTS.format(d=d), (edits, truncate))
    inner()


def _vec(n, fill):
    return base64.b64encode(np.full(n, fill, "<f4").tobytes()).decode()


HIDDEN = json.loads((BASE / "index.json").read_text())["hidden_size"]
field_value = st.one_of(json_value, st.integers(-3, 200), st.sampled_from([
    _vec(HIDDEN, 0.01), _vec(3, 0.1), _vec(HIDDEN, float("nan")), _vec(HIDDEN, 3e38), "@@@"]))
op_strategy = st.fixed_dictionaries(
    {"op": st.sampled_from(["insert", "update", "delete", "insert_knn", "delete_knn", "x", 5])},
    optional={k: field_value for k in (
        "layer", "feature", "target_id", "confidence", "entity", "relation", "target", "alpha",
        "down_meta", "gate_vector_b64", "up_vector_b64", "down_vector_b64", "key_vector_b64",
        "center_vector_b64", "restore")})
patch_strategy = st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), json_value), "operations": st.lists(op_strategy, max_size=4)},
    optional={"tags": json_value, "author": json_value, "base_model": json_value,
              "description": json_value})


def fuzz_patch() -> None:
    @CFG
    @given(patch_strategy, st.booleans())
    def inner(doc, merge):
        p = WORK / "p.vlp"
        p.write_bytes(json.dumps(doc).encode())
        verb = "MERGE" if merge else "APPLY PATCH"
        _run("patch.vlp", f'USE "{BASE}"; {verb} "{p}"; WALK "Paris" TOP 3; DESCRIBE "France"; '
                          f'INFER "The capital of France is" TOP 2', doc)
    inner()


def fuzz_patch_bytes() -> None:
    good = json.dumps({"version": 1, "tags": ["a"], "operations": [
        {"op": "insert", "layer": 1, "feature": 5, "gate_vector_b64": _vec(HIDDEN, 0.01),
         "down_meta": {"t": "x", "i": 5, "c": 1.0}}]}).encode()

    @CFG
    @given(st.integers(0, len(good) - 1), st.binary(min_size=1, max_size=3))
    def inner(pos, b):
        p = WORK / "p.vlp"
        p.write_bytes(good[:pos] + b + good[pos + len(b):])
        _run("patch.vlp (bytes)", f'USE "{BASE}"; APPLY PATCH "{p}"; DESCRIBE "France"', (pos, b))
    inner()


if __name__ == "__main__":
    WORK.mkdir(parents=True, exist_ok=True)
    for name in ("index.json", "weight_manifest.json", "tokenizer_config.json"):
        fuzz_json(name)
    fuzz_down_meta()
    fuzz_patch()
    fuzz_patch_bytes()
    print(json.dumps({"tried": tried, "failures": failures[:20], "n_failures": len(failures)}))
