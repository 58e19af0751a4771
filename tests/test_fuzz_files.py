"""Fuzz every vindex file and patches (hypothesis, in a subprocess capped by RLIMIT_AS):
random corruptions must end in an LqlError with a one-line message, never another
exception type, never exhausting memory.  Cases tried per file are printed (pytest -s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robust_fixtures import base_vindex  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("LQL_FUZZ_EXAMPLES", "40"))


def test_fuzz_files(tmp_path):
    base = base_vindex()
    env = dict(os.environ, PYTHONPATH=str(REPO), LQL_FUZZ_AS_GB="4")
    r = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_files_worker.py"), str(base),
                        str(tmp_path), str(EXAMPLES)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print("fuzz cases tried per file:", out["tried"])
    assert set(out["tried"]) >= {"index.json", "weight_manifest.json", "tokenizer_config.json",
                                 "down_meta.bin", "patch.vlp"}
    assert not out["failures"], json.dumps(out["failures"], indent=1)[:6000]
