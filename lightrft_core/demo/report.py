"""The demos' report table (``lightrft demo``)."""

from __future__ import annotations

from rich.table import Table

from .run import DemoResult


def accuracy_table(title: str, algorithm: str, result: DemoResult) -> Table:
    """Held-out accuracy after SFT, after RL, and the change in points."""
    table = Table(title=title)
    for column in ("", "accuracy"):
        table.add_column(column)
    table.add_row("after SFT (before RL)", f"{result.accuracy_before:.1%}")
    table.add_row(f"after {algorithm}", f"{result.accuracy_after:.1%}")
    change = result.accuracy_after - result.accuracy_before
    table.add_row("change", f"{change * 100:+.1f} points")
    return table
