"""The ``lql`` command.

    lql                              REPL (or, with stdin not a terminal, run stdin as a script)
    lql FILE.lql | lql run FILE.lql  run a script
    lql -e "STMT; STMT"              run statements (-e may repeat; runs before FILE)
    lql extract SOURCE -o OUT [--level browse|inference|all] [--dtype f16|f32|bf16]
                [--layers A-B] [--force] [--chat-template FILE.jinja]
    lql verify PATH
    lql serve PATH [PATH...] [--host H] [--port P] [--api-key KEY]

Options: ``--format table|json|csv`` (table: rich tables, coloured on a terminal,
plain otherwise; json: exactly one JSON array on stdout; csv: one CSV block
per table result), ``--continue-on-error``, ``--no-color``, ``--plot DIR`` (one
``NN-statement.png`` per plottable result, numbered by the statement's place in
the run; docs/NOTEBOOKS.md).

Exit status: 0 on success, 1 if any statement failed, 2 for a usage error,
130 when interrupted. Errors are one line on stderr (a syntax error adds the
offending line and a caret); set ``LQL_DEBUG=1`` for Python tracebacks.

Start-up is kept light: nothing heavy is imported before it is needed.
"""

from __future__ import annotations

import argparse
import os
import sys

SUBCOMMANDS = ("run", "extract", "verify", "serve")
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _debug() -> bool:
    return os.environ.get("LQL_DEBUG", "") not in ("", "0", "false", "no")


# --------------------------------------------------------------------------- parsers

def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-e", "--execute", metavar="STMTS", action="append", default=[],
                   help="run these statements (';'-separated); may repeat")
    p.add_argument("-f", "--format", choices=("table", "json", "csv"), default="table",
                   help="output format (default: table)")
    p.add_argument("--continue-on-error", action="store_true",
                   help="report a failing statement and go on with the next one")
    p.add_argument("--no-color", action="store_true", help="no colours in table output")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="write one PNG per plottable result (TRACE, WALK, DESCRIBE, INFER, "
                        "EXPLAIN INFER WITH ATTENTION) into DIR (needs the plot extra)")


def _main_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(
        prog="lql",
        description="LQL, the Lazarus Query Language: a transformer's weights as a database.",
        epilog="subcommands: lql run FILE | lql extract SOURCE -o OUT | lql verify PATH | "
               "lql serve. With no FILE and no -e, starts the REPL.")
    p.add_argument("file", nargs="?", metavar="FILE.lql",
                   help="script to run ('-' reads stdin)")
    _add_run_options(p)
    p.add_argument("--version", action="version", version=f"lql {__version__}")
    return p


def _sub_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lql")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an LQL script")
    run.add_argument("file", metavar="FILE.lql", help="script to run ('-' reads stdin)")
    _add_run_options(run)

    ex = sub.add_parser("extract", help="extract a model into a vindex")
    ex.add_argument("source", help="Hugging Face model folder or .gguf file")
    ex.add_argument("-o", "--output", required=True, metavar="OUT", help="vindex folder to write")
    ex.add_argument("--level", choices=("browse", "inference", "all"), default="browse")
    ex.add_argument("--dtype", choices=("f16", "f32", "bf16"), default="f16")
    ex.add_argument("--layers", metavar="A-B", default=None, help="layer range, inclusive")
    ex.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ex.add_argument("--chat-template", metavar="FILE.jinja", default=None,
                    help="chat template to store in place of the source's (e.g. for a GGUF "
                         "built without one)")

    ve = sub.add_parser("verify", help="check a vindex's files and checksums")
    ve.add_argument("path", metavar="PATH")

    se = sub.add_parser("serve", help="serve vindexes over HTTP (LARQL's /v1 API, USE REMOTE)")
    from .server.serve_cli import add_serve_arguments
    add_serve_arguments(se)
    return p


# --------------------------------------------------------------------------- helpers

def _eprint(msg: str) -> None:
    sys.stderr.write(msg.rstrip("\n") + "\n")
    sys.stderr.flush()


def _error_text(exc: BaseException) -> str:
    from .errors import LqlError, LqlSyntaxError
    if isinstance(exc, LqlSyntaxError):
        return exc.pretty()
    if isinstance(exc, LqlError):
        return str(exc)
    where = getattr(exc, "lql_where", None)
    loc = f"{where}: " if where else ""
    detail = str(exc)
    return (f"{loc}internal error: {type(exc).__name__}" + (f": {detail}" if detail else "")
            + ("" if _debug() else " (set LQL_DEBUG=1 for the traceback)"))


def _not_utf8(text: str) -> str | None:
    """Why an argv string is not valid UTF-8 (Python keeps bad bytes as surrogates), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        ch = text[exc.start]
        code = ord(ch)
        what = f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        return f"{what} at character {exc.start}"
    return None


def _report(exc: BaseException) -> None:
    if _debug():
        import traceback
        traceback.print_exception(exc, file=sys.stderr)
    _eprint("error: " + _error_text(exc))


# --------------------------------------------------------------------------- subcommands

_SUB_TARGETS = {
    "extract": ("lql.vindex", "cli_extract", "vindex extraction"),
    "verify": ("lql.vindex", "cli_verify", "vindex verification"),
    "serve": ("lql.server", "cli_serve", "the vindex server"),
}


def _subcommand(argv: list[str]) -> int:
    parser = _sub_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    if args.command == "run":
        return _run(args)
    module, func, what = _SUB_TARGETS[args.command]
    import importlib
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        if _debug():
            import traceback
            traceback.print_exception(exc, file=sys.stderr)
        _eprint(f"error: `lql {args.command}` is not built yet ({what}: {module}.{func} "
                f"is not available)")
        return EXIT_ERROR
    try:
        rc = fn(args)
    except KeyboardInterrupt:
        _eprint("cancelled")
        return EXIT_INTERRUPTED
    except Exception as exc:
        _report(exc)
        return EXIT_ERROR
    return int(rc or 0)


# --------------------------------------------------------------------------- running

def _run(args) -> int:
    from .errors import LqlError, LqlSyntaxError
    from .result import Result
    from .session import Session

    fmt = args.format
    session = Session()
    console = None
    if fmt == "table":
        from .render.table import make_console
        console = make_console(sys.stdout, color=False if args.no_color else None)

    jobs: list[tuple[str, str, str | None]] = []
    for n, text in enumerate(args.execute, 1):
        bad = _not_utf8(text)
        if bad:
            _eprint(f"error: -e argument {n} is not valid UTF-8 ({bad})")
            return EXIT_USAGE
        jobs.append(("text", text, None))
    if args.file == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _eprint(f"error: <stdin> is not valid UTF-8 (byte 0x{raw[exc.start]:02X} at "
                        f"offset {exc.start})")
                return EXIT_ERROR
            raw = raw.replace("\r\n", "\n")
        jobs.append(("text", raw, "<stdin>"))
    elif args.file:
        jobs.append(("file", args.file, args.file))

    plot_dir = None
    if getattr(args, "plot", None):
        from pathlib import Path
        plot_dir = Path(args.plot)
        if not plot_dir.is_dir():
            _eprint(f"error: --plot {args.plot!r}: folder does not exist")
            return EXIT_USAGE
        try:
            from .plot import require_matplotlib
            require_matplotlib()
        except LqlError as exc:
            _eprint(f"error: --plot: {exc}")
            return EXIT_USAGE

    results: list[Result] = []
    failed = False
    rc = EXIT_OK

    def emit(r: Result) -> None:
        nonlocal failed
        results.append(r)
        if r.kind == "error":
            failed = True
            if fmt != "csv":               # csv: write_csv reports errors itself
                _eprint("error: " + (r.message or "unknown error"))
            return
        if console is not None:            # the table format
            from .render.table import render
            render(r, console)
        if plot_dir is not None:
            from .plot import plot_name, plottable, write_plot
            if plottable(r):
                try:
                    path = write_plot(r, plot_dir / plot_name(r, len(results)))
                except LqlError as exc:
                    failed = True
                    _eprint(f"error: --plot: {exc}")
                    return
                if fmt == "table":
                    _eprint(f"plot: {path}")

    for kind, payload, source in jobs:
        try:
            if kind == "file":
                it = session.run_file_iter(payload, continue_on_error=args.continue_on_error)
            else:
                it = session.execute_iter(payload, continue_on_error=args.continue_on_error,
                                          source=source, script=True if source else None)
            for r in it:
                emit(r)
        except KeyboardInterrupt:
            _eprint("cancelled")
            rc = EXIT_INTERRUPTED
            break
        except Exception as exc:
            _report(exc)
            failed = True
            stmt = "SYNTAX ERROR" if isinstance(exc, LqlSyntaxError) else (
                getattr(exc, "lql_statement", None) or "ERROR")
            line = getattr(exc, "line", None) if isinstance(exc, LqlSyntaxError) else \
                getattr(exc, "lql_line", None)
            results.append(Result.error(stmt, str(exc) if isinstance(exc, LqlError)
                                        else _error_text(exc), line=line,
                                        error_type=type(exc).__name__))
            break

    if fmt == "json":
        from .render.data import write_json
        write_json(results, sys.stdout)
    elif fmt == "csv":
        from .render.data import write_csv
        write_csv(results, sys.stdout, sys.stderr)
    sys.stdout.flush()
    if rc:
        return rc
    return EXIT_ERROR if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return _subcommand(argv)
        parser = _main_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
        if not args.file and not args.execute:
            if sys.stdin.isatty():
                from .repl import run_repl
                return run_repl(no_color=args.no_color)
            args.file = "-"
        return _run(args)
    except KeyboardInterrupt:
        _eprint("cancelled")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
