"""Progress display for long vindex operations: a rich bar per stage on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from typing import Self

    from rich.progress import Progress, TaskID


class _Quiet:
    def stage(self, name: str, total: int | None = None) -> _QuietStage:
        return _QuietStage()

    def close(self) -> None:
        pass


class _QuietStage:
    def advance(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        return False


class _Plain:
    """One plain line on stderr per stage and per ~10% of it (for logs and pipes)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr

    def stage(self, name: str, total: int | None = None) -> _PlainStage:
        return _PlainStage(self.stream, name, total)

    def close(self) -> None:
        pass


class _PlainStage:
    def __init__(self, stream: IO[str], name: str, total: int | None) -> None:
        import time
        self.stream, self.name, self.total, self.done = stream, name, total, 0
        self.t0 = time.perf_counter()
        self.step = max(1, (total or 1) // 10)
        self._line("started")

    def _line(self, what: str) -> None:
        import time
        self.stream.write(f"extract: {self.name}: {what} ({time.perf_counter() - self.t0:.1f} s)\n")
        self.stream.flush()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.total and self.done < self.total and self.done % self.step == 0:
            self._line(f"{self.done}/{self.total}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if exc[0] is None:
            self._line("done" if not self.total else f"{self.total}/{self.total} done")
        return False


class _Rich:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<22}"),
                                 BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=False)
        self.progress.start()

    def stage(self, name: str, total: int | None = None) -> _RichStage:
        return _RichStage(self.progress, self.progress.add_task(name, total=total))

    def close(self) -> None:
        self.progress.stop()


class _RichStage:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        task = self.progress.tasks[self.task] if self.task < len(self.progress.tasks) else None
        if exc[0] is None and task is not None and task.total is not None:
            self.progress.update(self.task, completed=task.total)
        return False


@contextmanager
def progress_display(enabled: bool | str | None = None) -> Iterator[_Rich | _Plain | _Quiet]:
    """``enabled=None``: a bar only when stderr is a terminal; ``"plain"``: a bar on a
    terminal, plain progress lines on stderr otherwise (``lql extract``)."""
    p: _Rich | _Plain | _Quiet
    if enabled == "plain":
        p = _Rich() if sys.stderr.isatty() else _Plain()
    else:
        if enabled is None:
            enabled = sys.stderr.isatty()
        p = _Rich() if enabled else _Quiet()
    try:
        yield p
    finally:
        p.close()
