"""``--progress``: a progress bar of the pages dumped or restored (rich, on stderr, tty only).

The CLI calls ``enable()``; the orchestrators call ``start(what, total_bytes)`` once the
amount is known (a dump: the tree's resident anonymous memory; a restore: the pages in the
image) and ``stop()`` at the end; the memory module calls ``advance(nbytes)`` per block.
Nothing is shown (and nothing is imported) unless enabled and stderr is a terminal.
"""

from __future__ import annotations

import sys

PAGE = 4096
_enabled = False
_bar = None


def enable(force: bool = False) -> bool:
    """Show a bar from now on if stderr is a terminal (or ``force``); returns whether."""
    global _enabled
    _enabled = force or sys.stderr.isatty()
    return _enabled


class _Bar:
    def __init__(self, what: str, total: int):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
            TextColumn("{task.fields[pages]} pages"), TransferSpeedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=False)
        self.progress.start()
        self.task = self.progress.add_task(what, total=max(total, 1), pages=0)
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        self.progress.update(self.task, completed=self.done, pages=self.done // PAGE)

    def stop(self) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[0].total)
        self.progress.stop()


def start(what: str, total_bytes: int) -> None:
    global _bar
    if _enabled and _bar is None:
        _bar = _Bar(what, total_bytes)


def advance(nbytes: int) -> None:
    if _bar is not None:
        _bar.advance(nbytes)


def stop() -> None:
    global _bar
    if _bar is not None:
        bar, _bar = _bar, None
        bar.stop()
