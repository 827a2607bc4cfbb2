"""Progress bars for long commands (rich), sharing the console with the metric lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

ProgressFactory = Callable[[str], Callable[[int, int], None]]


@contextmanager
def progress_bars(console: Console, enabled: bool = True) -> Iterator[ProgressFactory]:
    """Yields ``factory(label) -> update(step, total)``; one bar per label."""
    if not enabled:
        yield lambda label: lambda step, total: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def factory(label: str) -> Callable[[int, int], None]:
            def update(step: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = progress.add_task(label, total=total)
                progress.update(tasks[label], completed=step, total=total)

            return update

        yield factory
