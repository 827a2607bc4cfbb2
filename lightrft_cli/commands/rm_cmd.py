"""``lightrft rm``: reward-model training (Bradley–Terry) on preference pairs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..errors import user_errors
from ..progress import progress_bars
from .train_cmd import (
    CONFIG_OPTION,
    PLUGIN_OPTION,
    SUPERVISED_UNUSED,
    launched_as_rank_0,
    preflight,
    resolve,
    run_console,
)

RM_OVERRIDES = typer.Argument(
    None, help="Overrides such as sft.epochs=2 sft.learning_rate=1e-5 (later wins)."
)


def rm(
    config: Path | None = CONFIG_OPTION,
    plugin: list[str] = PLUGIN_OPTION,
    overrides: list[str] | None = RM_OVERRIDES,
) -> None:
    """Train a reward model on prompt/chosen/rejected rows (data.train_path; the sft
    section's optimisation options); the result is what reward.name=model loads."""
    from lightrft_core.rewards.trunk_scoring import reads_images
    from lightrft_core.trainer.reward_model import run_reward_model_training

    cfg, manager = resolve(config, plugin, overrides, SUPERVISED_UNUSED)
    console = run_console()  # silent on ranks other than 0 under torchrun
    bars_on = cfg.logging.progress_bar and launched_as_rank_0()
    with user_errors(), progress_bars(console, bars_on) as bars:
        preflight(cfg, manager)
        result = run_reward_model_training(
            cfg, manager, console=console, progress=bars("reward-model steps")
        )
    steps = [row for row in result.history if "rm/loss" in row]
    evals = [row for row in result.history if "eval/accuracy" in row]
    summary = f"final loss {steps[-1]['rm/loss'] if steps else float('nan'):.4f}"
    if evals:
        summary += f", held-out accuracy {evals[-1]['eval/accuracy']:.3f}"
    load_with = "reward.name=model"
    if reads_images(manager.get_actor(cfg.model.name)):
        load_with += f" reward.actor={cfg.model.name}"
    console.print(escape(f"{summary}; reward model: {result.final_model} ({load_with})"))
