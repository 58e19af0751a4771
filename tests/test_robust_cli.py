"""Robustness of the CLI and of atomic output: invalid UTF-8, long HELP topics, chat-template
bombs, SIGTERM during a folder build, stale temp folders, umask, progress lines, a source
without tokenizer.json (cases 7 and 8 of the issue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robust_fixtures import base_vindex  # noqa: E402

from lql.errors import LqlError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _lql(*args, stdin: bytes | None = None, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "lql", *args], input=stdin, capture_output=True,
                          env=env, cwd=cwd, timeout=120)


def test_e_argument_invalid_utf8():
    r = _lql("-e", "HELP \udcff")
    err = r.stderr.decode()
    assert r.returncode == 2 and "not valid UTF-8" in err and "internal error" not in err


def test_stdin_invalid_utf8():
    r = _lql(stdin=b"HELP \xff;\n")
    err = r.stderr.decode()
    assert r.returncode == 1 and "<stdin> is not valid UTF-8" in err and "internal" not in err


def test_help_long_topic():
    from lql.session import Session
    with pytest.raises(LqlError, match="no help for"):
        Session().execute("HELP " + "x" * 300)


def test_chat_template_range_bomb():
    from lql.model.chat import ChatTemplateError, render_chat
    with pytest.raises(ChatTemplateError, match="Range too big"):
        render_chat("{% for i in range(10**8) %}x{% endfor %}", [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError):
        render_chat("{{ 1 / 0 }}", [{"role": "user", "content": "x"}])


def test_atomic_dir_respects_umask_and_names_pid(tmp_path):
    from lql.atomic import AtomicDir, atomic_write_text
    old = os.umask(0o022)
    try:
        with AtomicDir(tmp_path / "out") as d:
            assert f".out.tmp-{os.getpid()}-" in d.tmp.name
            (d.tmp / "f").write_text("x")
        atomic_write_text(tmp_path / "g.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "g.txt").stat().st_mode & 0o777 == 0o644


def test_stale_temp_folder_of_a_dead_process_is_removed(tmp_path, capsys):
    from lql.atomic import AtomicDir
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.tmp-{dead}-abc"
    stale.mkdir()
    (stale / "x").write_text("x")
    mine = tmp_path / f".out.tmp-{os.getpid()}-zzz"       # a live process's: kept
    mine.mkdir()
    with AtomicDir(tmp_path / "out"):
        pass
    assert not stale.exists() and mine.exists()
    assert "removed stale temporary folder" in capsys.readouterr().err


def test_sigterm_during_folder_build_cleans_up(tmp_path):
    code = ("import sys, time; sys.path.insert(0, {!r})\n"
            "from lql.atomic import AtomicDir\n"
            "with AtomicDir({!r}) as d:\n"
            "    (d.tmp / 'x').write_text('x'); print('ready', flush=True); time.sleep(60)\n".format(str(REPO), str(tmp_path / "out")))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_extract_refuses_a_source_without_tokenizer(tmp_path):
    import shutil

    from model_fixtures import tiny_model_dir

    from lql.vindex import extract
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir("llama"), src)
    (src / "tokenizer.json").unlink()
    with pytest.raises(LqlError, match="no tokenizer.json"):
        extract(src, tmp_path / "out.vindex")
    assert not (tmp_path / "out.vindex").exists()


def test_cli_extract_prints_progress_lines_when_not_a_terminal(tmp_path):
    from model_fixtures import tiny_model_dir
    r = _lql("extract", str(tiny_model_dir("llama")), "-o", str(tmp_path / "o.vindex"))
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "extract: layers (3): started" in err and "extract: layers (3): 3/3 done" in err
    assert (tmp_path / "o.vindex").stat().st_mode & 0o077 == (0o777 & ~_umask()) & 0o077


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_verify_cli_on_a_fresh_vindex_says_ok():
    r = _lql("verify", str(base_vindex()))
    assert r.returncode == 0 and "vindex ok" in r.stdout.decode()


def test_startup_stays_light():
    t0 = time.perf_counter()
    r = _lql("-e", "HELP")
    assert r.returncode == 0
    assert time.perf_counter() - t0 < 10
