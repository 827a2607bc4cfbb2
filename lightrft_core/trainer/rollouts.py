"""Saved rollouts (``logging.save_rollouts_every``): the samples a step trained on, one row
each, in ``RUN/rollouts/step_000012.parquet``; and the reading side of ``lightrft rollouts``.

A row (docs/rollouts.md, "Schema"): ``step``, ``rank``, ``group``,
``sample``, ``prompt``, ``response``, ``label``, ``reward``, ``reward/<name>`` per sub-score,
``advantage`` (mean over the response's tokens), ``response_length``, ``truncated`` and
``logprob_mismatch`` (mean |trainer - engine| log-prob over the response's tokens, null when
either is missing), then ``text/<name>`` per text of the reward (``RewardOutput.texts``, e.g.
a judge's verdict; null for a sample whose round has none). The rows of every data-parallel
rank are gathered; rank 0 writes the file, atomically (a temporary file renamed over the
final name).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .distributed import RowRanks, gather_columns
from .dynamic_sampling import CollectedGroups
from .experience import RolloutBatch

ROLLOUTS_DIR = "rollouts"
_FILE = re.compile(r"step_(\d+)\.parquet")

Row = dict[str, Any]

#: Columns of every row, in order (sub-scores ``reward/<name>`` follow ``reward``).
INT_COLUMNS = ("step", "rank", "group", "sample")
TEXT_COLUMNS = ("prompt", "response", "label")
#: Prefix of the reward's text columns (``text/verdict``), after the fixed columns.
TEXT_PREFIX = "text/"


def is_text(column: str) -> bool:
    return column in TEXT_COLUMNS or column.startswith(TEXT_PREFIX)


def rollout_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / ROLLOUTS_DIR / f"step_{step:06d}.parquet"


def saved_steps(run_dir: str | Path) -> list[int]:
    """Steps with a rollouts file in ``run_dir``, ascending."""
    folder = Path(run_dir) / ROLLOUTS_DIR
    if not folder.is_dir():
        return []
    found = (_FILE.fullmatch(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


# ---------------------------------------------------------------------- writing
def step_rows(
    step: int, rank: int, collected: CollectedGroups, rollout: RolloutBatch, tokenizer: Any
) -> list[Row]:
    """This rank's rows of ``rollout`` (the trained batch, in its order), after training
    (its advantages and trainer log-probs are set)."""
    _, outputs, _ = collected.trained_batch()
    mask = rollout.action_mask
    lengths = mask.sum(dim=1)
    advantages = _response_means(rollout.advantages, mask)
    mismatch = None
    if rollout.trainer_log_probs is not None:
        mismatch = _response_means(
            (rollout.trainer_log_probs - rollout.engine_log_probs).abs(), mask
        )
    text_names = sorted({name for r in collected.rounds for name in r.texts})
    rows: list[Row] = []
    for index, output in enumerate(outputs):
        round_index, group = collected.chosen[output.prompt_index]
        scored = collected.rounds[round_index]
        n = scored.group_size
        position = group * n + index % n  # this sample's place in its round
        item = scored.items[group]
        row: Row = {
            "step": step,
            "rank": rank,
            "group": output.prompt_index,
            "sample": index % n,
            "prompt": item.prompt_text,
            "response": tokenizer.decode(output.token_ids, skip_special_tokens=True),
            "label": None if item.label is None else str(item.label),
            "reward": float(rollout.rewards[index]),
        }
        for name in sorted(scored.sub_scores):
            row[f"reward/{name}"] = float(scored.sub_scores[name][position])
        row["advantage"] = None if advantages is None else _number(advantages[index])
        row["response_length"] = int(lengths[index])
        row["truncated"] = output.finish_reason == "length"
        both = mismatch is not None and bool(output.log_probs)
        row["logprob_mismatch"] = _number(mismatch[index]) if both else None  # type: ignore[index]
        for name in text_names:
            texts = scored.texts.get(name)
            row[TEXT_PREFIX + name] = None if texts is None else texts[position]
        rows.append(row)
    return rows


def _response_means(values: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor | None:
    """Per-row mean of ``values`` ``[B, T-1]`` over the response tokens (NaN for none)."""
    if values is None:
        return None
    tokens = mask.sum(dim=1)
    sums = torch.where(mask, values.float(), torch.zeros((), dtype=torch.float32)).sum(dim=1)
    return torch.where(tokens > 0, sums / tokens.clamp(min=1), torch.full_like(sums, math.nan))


def _number(value: torch.Tensor | float) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def gather_rows(strategy: RowRanks, rows: Sequence[Row]) -> list[Row]:
    """Every rank's ``rows`` in rank order (each rank passes the same number columns: the
    reward model's sub-scores are the same on every rank; a reward text column that a rank
    lacks, e.g. after a batch that failed as a whole, is null in its rows). Collective: the
    reward text column names in two gathers, the numbers (the texts' byte lengths among
    them) in one, the UTF-8 bytes of each text column in one gather each."""
    if strategy.world_size == 1:
        return list(rows)
    names = _gather_strings(strategy, [c for c in rows[0] if c.startswith(TEXT_PREFIX)])
    columns = [c for c in rows[0] if not c.startswith(TEXT_PREFIX)] + sorted(set(names))
    numbers = [c for c in columns if not is_text(c)]
    local = {c: torch.tensor([_as_float(r[c]) for r in rows], dtype=torch.float64) for c in numbers}
    encoded = {c: _utf8([r.get(c) for r in rows]) for c in columns if is_text(c)}
    for c, values in encoded.items():
        local[f"bytes/{c}"] = torch.tensor([-1.0 if b is None else len(b) for b in values])
    every = gather_columns(strategy, local)
    texts = {
        c: _split(_gather_bytes(strategy, values), every[f"bytes/{c}"].tolist())
        for c, values in encoded.items()
    }
    kinds = {c: type(rows[0][c]) for c in numbers}
    return [
        {c: texts[c][i] if is_text(c) else _typed(every[c][i], kinds[c]) for c in columns}
        for i in range(len(every[numbers[0]]))
    ]


def _utf8(strings: Sequence[str | None]) -> list[bytes | None]:
    return [None if s is None else s.encode() for s in strings]


def _gather_bytes(strategy: RowRanks, values: Sequence[bytes | None]) -> bytes:
    """Every rank's ``values`` concatenated, in rank order. One gather."""
    joined = bytearray(b"".join(b for b in values if b is not None))
    local = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0)
    return strategy.all_gather(local.to(torch.uint8)).cpu().numpy().tobytes()


def _gather_strings(strategy: RowRanks, strings: Sequence[str]) -> list[str]:
    """Every rank's ``strings`` in rank order. Two gathers: the UTF-8 lengths, the bytes."""
    encoded = [s.encode() for s in strings]
    lengths = strategy.all_gather(torch.tensor([len(b) for b in encoded], dtype=torch.int64))
    data = _gather_bytes(strategy, encoded)
    return [text or "" for text in _split(data, lengths.tolist())]  # no length is -1 (null)


def _as_float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _typed(value: torch.Tensor, kind: type) -> Any:
    number = float(value)
    if math.isnan(number):
        return None
    return kind(number) if kind in (int, bool) else number


def _split(data: bytes, lengths: Sequence[float]) -> list[str | None]:
    out: list[str | None] = []
    start = 0
    for length in (int(n) for n in lengths):
        if length < 0:
            out.append(None)
            continue
        out.append(data[start : start + length].decode())
        start += length
    return out


def write_rollouts(path: Path, rows: Sequence[Row]) -> None:
    """``rows`` as a Parquet file at ``path``: written to a temporary file beside it, then
    renamed, so a crash leaves the old file or none, never half a file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(list(rows), schema=_schema(rows[0]))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            with pq.ParquetWriter(f, table.schema) as writer:
                writer.write_table(table)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _schema(row: Row) -> Any:
    import pyarrow as pa

    def kind(column: str) -> Any:
        if column in INT_COLUMNS or column == "response_length":
            return pa.int64()
        if is_text(column):
            return pa.string()
        return pa.bool_() if column == "truncated" else pa.float64()

    return pa.schema([(column, kind(column)) for column in row])


def save_rollouts(
    run_dir: Path,
    step: int,
    collected: CollectedGroups,
    rollout: RolloutBatch,
    *,
    strategy: RowRanks,
    tokenizer: Any,
    log_samples: Callable[[int, list[Row]], None],
) -> None:
    """Gather the step's rows from every rank, write them (rank 0) and hand them to
    ``log_samples`` (the trackers' samples table). Collective."""
    rows = gather_rows(strategy, step_rows(step, strategy.rank, collected, rollout, tokenizer))
    if strategy.is_rank_0:
        write_rollouts(rollout_path(run_dir, step), rows)
    log_samples(step, rows)


# ---------------------------------------------------------------------- reading
def read_rollouts(run_dir: str | Path, step: int | None = None) -> tuple[int, list[Row]]:
    """``(step, rows)`` of ``step`` (default: the latest saved); a clear error when ``run_dir``
    holds no saved rollouts or not that step."""
    import pyarrow.parquet as pq

    steps = saved_steps(run_dir)
    if not steps:
        raise FileNotFoundError(
            f"{run_dir} holds no saved rollouts (no {ROLLOUTS_DIR}/step_*.parquet): train with "
            "logging.save_rollouts_every=N to save them"
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(
            f"{run_dir} has no rollouts of step {step}; saved steps: {_ranges(steps)}"
        )
    return step, pq.read_table(rollout_path(run_dir, step)).to_pylist()


def _ranges(steps: Sequence[int]) -> str:
    shown = ", ".join(str(s) for s in steps[:20])
    return shown + (f" ... {steps[-1]}" if len(steps) > 20 else "")


# ---------------------------------------------------------------------- filters
#: Short names ``--filter`` accepts for columns.
ALIASES = {"length": "response_length", "text": "response", "mismatch": "logprob_mismatch"}
_CONDITION = re.compile(r"\s*([A-Za-z_][\w/.-]*)\s*(<=|>=|!=|==|!~|<|>|=|~)\s*(.*?)\s*", re.S)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass(frozen=True)
class RowFilter:
    """One ``--filter`` condition: ``column op value``."""

    text: str
    column: str
    test: Callable[[Any], bool]

    def __call__(self, row: Mapping[str, Any]) -> bool:
        value = row.get(self.column)
        return value is not None and self.test(value)


def parse_filter(text: str, columns: Sequence[str]) -> RowFilter:
    """``reward<0.5``, ``length>=100``, ``reward/accuracy==1``, ``text~regex`` (regex search
    in the response), ``prompt!~regex``; ``=`` means ``==``. ``ValueError`` (one line) for
    anything else."""
    match = _CONDITION.fullmatch(text)
    if not match:
        raise ValueError(
            f"bad filter {text!r}: write COLUMN OP VALUE with OP one of < <= > >= == != ~ !~ "
            "(e.g. reward<0.5, length>100, text~regex)"
        )
    name, op, operand = match.groups()
    column = ALIASES.get(name, name)
    if column not in columns:
        raise ValueError(f"bad filter {text!r}: no column {name!r}; columns: {', '.join(columns)}")
    op = "==" if op == "=" else op
    if op in ("~", "!~"):
        if not is_text(column):
            raise ValueError(
                f"bad filter {text!r}: {op} matches text (prompt, response, label, text/...)"
            )
        try:
            pattern = re.compile(operand)
        except re.error as exc:
            raise ValueError(f"bad filter {text!r}: not a regular expression ({exc})") from None
        found = op == "~"
        return RowFilter(text, column, lambda v: (pattern.search(v) is not None) == found)
    compare = _COMPARE[op]
    if is_text(column):
        if op not in ("==", "!="):
            raise ValueError(f"bad filter {text!r}: compare text with == != ~ !~")
        return RowFilter(text, column, lambda v: compare(v, operand))
    try:
        number = float(operand)
    except ValueError:
        raise ValueError(f"bad filter {text!r}: {operand!r} is not a number") from None
    return RowFilter(text, column, lambda v: compare(float(v), number))


def select_rows(
    rows: Sequence[Row],
    filters: Sequence[RowFilter] = (),
    *,
    worst: int | None = None,
    best: int | None = None,
) -> list[Row]:
    """The rows every filter keeps; then the ``worst`` lowest and/or ``best`` highest
    rewards (worst first, then best from the highest down)."""
    kept = [r for r in rows if all(f(r) for f in filters)]
    if worst is None and best is None:
        return kept
    order = sorted(range(len(kept)), key=lambda i: kept[i]["reward"])
    picked = order[:worst] if worst is not None else []
    if best is not None:
        picked += [i for i in reversed(order[max(0, len(order) - best) :]) if i not in picked]
    return [kept[i] for i in picked]
