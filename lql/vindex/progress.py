"""Progress display for long vindex operations: a rich bar per stage on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from contextlib import contextmanager


class _Quiet:
    def stage(self, name: str, total: int | None = None):
        return _QuietStage()

    def close(self) -> None:
        pass


class _QuietStage:
    def advance(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


class _Rich:
    def __init__(self):
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

    def stage(self, name: str, total: int | None = None):
        return _RichStage(self.progress, self.progress.add_task(name, total=total))

    def close(self) -> None:
        self.progress.stop()


class _RichStage:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        task = self.progress.tasks[self.task] if self.task < len(self.progress.tasks) else None
        if exc[0] is None and task is not None and task.total is not None:
            self.progress.update(self.task, completed=task.total)
        return False


@contextmanager
def progress_display(enabled: bool | None = None):
    """``enabled=None``: a bar only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    p = _Rich() if enabled else _Quiet()
    try:
        yield p
    finally:
        p.close()
