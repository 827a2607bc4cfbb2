"""The start and the finish every training command shares (``lightrft train``, ``lightrft
sft``, ``lightrft rm``); each loop keeps only its own body.

Start (``start_run``): the strategy from ``strategy.name``, its process group set up, the
run folder held (``run_folder.py``: a lock file, released by ``finish_run``, or on an error
inside ``released_on_error``), every random generator seeded with ``run.seed`` (the one
seed of a run), the global batch sizes checked against the number of ranks, and the
tokenizer of ``model.path`` (with its processor, for a vision-language model). Then, after
the loop has built and prepared its models, ``open_run_log`` writes ``config.yaml`` and opens
the metrics log. Finish (``finish_run``): the trained model exported to ``<output_dir>/final``
and the log closed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import LightRFTConfig, dump_config
from ..interfaces import Actor, StrategyBase, TrackedRun
from ..plugins import PluginManager
from ..rng import seed_everything
from ..trackers import build_trackers
from .distributed import check_divisible
from .metrics import MetricsLogger
from .resume import flat_config
from .run_folder import RunFolderBusy, RunLock, hold_run_folder

#: The exported model's folder inside ``run.output_dir``.
FINAL_DIR = "final"


@dataclass
class RunStart:
    """What ``start_run`` set up: the strategy (process group ready, RNGs seeded), the
    tokenizer of the run's model, the run folder, and the model's processor
    (``AutoProcessor``; ``None`` for a model without one, e.g. a text-only model), and the
    lock of the run folder (rank 0's; ``None`` on the other ranks)."""

    strategy: StrategyBase
    tokenizer: Any
    output_dir: Path
    processor: Any = None
    lock: RunLock | None = None

    def release(self) -> None:
        """Let go of the run folder (rank 0 removes the lock file)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


@contextmanager
def released_on_error(start: RunStart) -> Iterator[None]:
    """Release the run folder if the body raises (the lock stays held otherwise)."""
    try:
        yield
    except BaseException:
        start.release()
        raise


def model_path(cfg: LightRFTConfig, manager: PluginManager) -> str:
    """The Hugging Face folder the run's actor loads (``model.path`` for the built-in
    actor), as the actor class declares it; an error when it loads none (the run's tokenizer
    comes from that folder)."""
    path = manager.get_actor(cfg.model.name).hf_path(cfg.model.options)
    if path is None:
        raise ValueError(
            f"actor {cfg.model.name!r} needs a model: set model.path to a Hugging Face model "
            "folder (its tokenizer is the run's)"
        )
    return path


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved with the model folder ``path``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def start_run(
    cfg: LightRFTConfig,
    manager: PluginManager,
    *,
    global_batches: Mapping[str, int | None],
) -> RunStart:
    """Build and set up the strategy (every loop takes one that splits sequences), seed every
    generator with ``run.seed``, check that each of ``global_batches`` (config key -> size)
    divides over the data-parallel ranks, and load the tokenizer and the processor
    (``Actor.load_processor``)."""
    strategy = manager.get_strategy(cfg.strategy.name)(cfg.strategy.options)
    strategy.setup_distributed()
    start = RunStart(strategy, None, Path(cfg.run.output_dir), lock=hold_folder(strategy, cfg))
    with released_on_error(start):
        seed_everything(cfg.run.seed)
        ranks = "ranks" if strategy.sequence_parallel_size == 1 else "sequence-parallel groups"
        check_divisible(strategy.data_parallel_size, dict(global_batches), ranks=ranks)
        path = model_path(cfg, manager)
        start.processor = manager.get_actor(cfg.model.name).load_processor(path)
        start.tokenizer = load_tokenizer(path)
    return start


def hold_folder(strategy: StrategyBase, cfg: LightRFTConfig) -> RunLock | None:
    """Rank 0 holds ``run.output_dir`` (``hold_run_folder``); every rank learns whether it
    could (the collective is the other ranks' barrier) and all stop if not."""
    lock, error = None, None
    if strategy.is_rank_0:
        try:
            lock = hold_run_folder(cfg.run.output_dir)
        except Exception as exc:  # the other ranks must still learn of it below
            error = exc
    failed = strategy.all_reduce(torch.tensor([float(error is not None)]), op="max")
    if error is not None:
        raise error
    if float(failed[0]) > 0:
        raise RunFolderBusy(
            f"rank 0 could not hold run.output_dir {cfg.run.output_dir} (see its error)"
        )
    return lock


def open_run_log(
    cfg: LightRFTConfig,
    strategy: StrategyBase,
    manager: PluginManager,
    *,
    console: Any = None,
    resume_step: int | None = None,
    run_id: str | None = None,
) -> MetricsLogger:
    """The metrics log of ``run.output_dir``, after writing the resolved ``config.yaml``
    there: rank 0 starts the trackers of ``logging.trackers`` (``resume_step`` continues an
    earlier run's log; ``run_id`` names the run the trackers continue, a new id if ``None``),
    the other ranks track nothing."""
    if not strategy.is_rank_0:
        return MetricsLogger()
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    trackers = build_trackers(
        cfg.logging.active_trackers(),
        cfg.logging.tracker_options,
        manager,
        console=console,
        log_every=cfg.logging.log_every,
    )
    run = TrackedRun(
        run_id=run_id or uuid.uuid4().hex[:12],
        name=cfg.run.name,
        output_dir=out,
        config=flat_config(cfg, strategy.world_size),
        resume_step=resume_step,
    )
    return MetricsLogger(trackers, run)


def unwrapped_actor(strategy: StrategyBase, prepared: torch.nn.Module) -> Actor:
    """The user's ``Actor`` inside what ``strategy.prepare`` returned."""
    actor = strategy.unwrap(prepared)
    if not isinstance(actor, Actor):
        raise TypeError(
            f"{type(actor).__name__} is not a lightrft_core.interfaces.Actor (the model the "
            "loop trains must be one)"
        )
    return actor


def finish_run(start: RunStart, model: torch.nn.Module, metrics: MetricsLogger) -> Path:
    """Export ``model`` (a Hugging Face module) to ``<output_dir>/final`` with the processor
    (whose ``save_pretrained`` writes its tokenizer too) or else the tokenizer (collective),
    close the log; returns the export folder."""
    final = start.output_dir / FINAL_DIR
    saved_with = start.tokenizer if start.processor is None else start.processor
    with released_on_error(start):
        start.strategy.export_hf(model, final, saved_with)
    metrics.close()
    start.release()
    return final
