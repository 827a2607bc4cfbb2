"""``lightrft rollouts``: browse the samples a run saved (``logging.save_rollouts_every``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import fail

#: Characters of a prompt, response or reward text shown without ``--full``.
SHOWN_CHARS = 200
#: Columns shown after the numbers every row has (sub-scores come from the reward model).
_NUMBER_COLUMNS = ("reward", "advantage", "response_length", "logprob_mismatch")
_HEADERS = {"response_length": "length", "logprob_mismatch": "mismatch"}


def rollouts(
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A run folder."),
    step: int | None = typer.Option(None, "--step", help="The step (default: the latest saved)."),
    worst: int | None = typer.Option(None, "--worst", min=0, help="The K lowest rewards."),
    best: int | None = typer.Option(None, "--best", min=0, help="The K highest rewards."),
    filters: list[str] = typer.Option(
        [],
        "--filter",
        help="Keep rows where COLUMN OP VALUE holds, OP one of < <= > >= == != ~ !~ (regex); "
        "e.g. reward<0.5, length>100, text~regex (text: the response). Repeat to combine.",
    ),
    full: bool = typer.Option(False, "--full", help="Show whole prompts and responses."),
    prompts: bool = typer.Option(True, "--prompts/--no-prompts", help="Show the prompt column."),
) -> None:
    """Print a run's saved rollouts (prompt, response, rewards, advantage, length, log-prob
    mismatch, the reward's texts such as a judge's verdict) of one step as a table: the
    latest step unless --step; --worst/--best K pick by reward; --filter keeps matching
    rows."""
    from lightrft_core.trainer.rollouts import parse_filter, read_rollouts, select_rows

    try:
        shown_step, rows = read_rollouts(run_dir, step)
        conditions = [parse_filter(text, list(rows[0]) if rows else []) for text in filters]
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    picked = select_rows(rows, conditions, worst=worst, best=best)
    console = Console(highlight=False)
    if not picked:
        console.print(Text(f"{run_dir} step {shown_step}: no sample of {len(rows)} matches"))
        return
    title = f"{run_dir} step {shown_step}: {len(picked)} of {len(rows)} samples"
    console.print(_table(picked, title=title, full=full, prompts=prompts))


def _table(rows: list[dict[str, Any]], *, title: str, full: bool, prompts: bool) -> Table:
    """One line per sample: ``rank:group.sample``, the numbers, prompt, response and the
    reward's texts (``text/<name>``)."""
    table = Table(title=Text(title), show_lines=True)
    scores = [c for c in rows[0] if c.startswith("reward/")]
    numbers = ["reward", *scores, *_NUMBER_COLUMNS[1:]]
    reward_texts = [c for c in rows[0] if c.startswith("text/")]
    table.add_column("#", justify="right", no_wrap=True)
    for column in numbers:
        table.add_column(Text(_HEADERS.get(column, column)), justify="right")
    if prompts:
        table.add_column("prompt", ratio=1)
    table.add_column("response", ratio=2)
    for column in reward_texts:
        table.add_column(Text(column), ratio=1)
    for row in rows:
        texts = [row["prompt"], row["response"]] if prompts else [row["response"]]
        texts += [row[c] for c in reward_texts]
        table.add_row(
            f"{row['rank']}:{row['group']}.{row['sample']}",
            *(_number(row.get(c)) for c in numbers),
            *(_text(text, full) for text in texts),
        )
    return table


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _text(value: str | None, full: bool) -> Text:
    """User text as it is (a ``Text``: never read as markup), cut to ``SHOWN_CHARS``; null
    as ``-``."""
    if value is None:
        return Text("-")
    if full or len(value) <= SHOWN_CHARS:
        return Text(value)
    return Text(value[:SHOWN_CHARS] + f"… (+{len(value) - SHOWN_CHARS} chars, --full)")
