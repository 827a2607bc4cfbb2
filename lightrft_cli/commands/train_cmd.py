"""``lightrft train``: resolve plugins and configuration, then run the training loop.

The same command runs one process per device under ``torchrun -m lightrft_cli train ...``;
then only rank 0 prints (tables, progress bars, metric lines)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightrft_core.config import COMPONENT_SECTIONS, LightRFTConfig, load_config
from lightrft_core.plugins import PluginManager, get_plugin_manager
from lightrft_core.preflight import check_model_folder, check_output_dir

from ..errors import user_errors
from ..progress import progress_bars

CONFIG_OPTION = typer.Option(
    None, "--config", "-c", exists=True, dir_okay=False, help="YAML configuration file."
)
PLUGIN_OPTION = typer.Option(
    [],
    "--plugin",
    "-p",
    help="Load a plugin: an entry-point name, an importable module, or a .py file. Repeatable.",
)
OVERRIDES_ARGUMENT = typer.Argument(
    None, help="Overrides such as trainer.max_steps=10 algorithm.name=grpo (later wins)."
)


def launched_as_rank_0() -> bool:
    """False in the processes ``torchrun`` starts with a rank other than 0."""
    return os.environ.get("RANK", "0") == "0"


def run_console() -> Console:
    """The console of a run: silent on ranks other than 0."""
    return Console(highlight=False, quiet=not launched_as_rank_0())


#: The component sections the supervised commands (sft, rm) do not use.
SUPERVISED_UNUSED = ("engine", "algorithm", "reward")


def resolve(
    config: Path | None,
    plugin: list[str],
    overrides: list[str] | None,
    unused_sections: tuple[str, ...] = (),
) -> tuple[LightRFTConfig, PluginManager]:
    """Load the named plugins, then the configuration checked against them (a component of
    ``unused_sections`` need not be installed)."""
    manager = get_plugin_manager()
    with user_errors():
        for spec in plugin:
            manager.load_plugin(spec)
        cfg = load_config(config, overrides or [], manager=manager, unused_sections=unused_sections)
    return cfg, manager


def preflight(cfg: LightRFTConfig, manager: PluginManager) -> None:
    """Refuse an unusable model folder or run folder before anything heavy is loaded."""
    path = manager.get_actor(cfg.model.name).hf_path(cfg.model.options)
    if path is not None:
        check_model_folder(path)
    if launched_as_rank_0():
        check_output_dir(cfg.run.output_dir)


def components_table(cfg: LightRFTConfig, manager: PluginManager) -> Table:
    table = Table(title="Components")
    for column in ("section", "name", "class", "plugin"):
        table.add_column(column)
    for section, kind in COMPONENT_SECTIONS.items():
        info = manager.component_info(kind, getattr(cfg, section).name)
        table.add_row(section, *(escape(text) for text in (info.name, info.qualname, info.plugin)))
    return table


def train(
    config: Path | None = CONFIG_OPTION,
    plugin: list[str] = PLUGIN_OPTION,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Resolve plugins and validate the configuration, then stop."
    ),
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Train a policy with RL (rollout, reward, advantages, update) from a configuration."""
    cfg, manager = resolve(config, plugin, overrides)
    console = run_console()
    console.print(components_table(cfg, manager))
    if dry_run:
        console.print("[green]configuration is valid[/]; --dry-run: not training.")
        return
    from lightrft_core.trainer.rl import RLTrainer

    bars_on = cfg.logging.progress_bar and launched_as_rank_0()
    with user_errors(), progress_bars(console, bars_on) as bars:
        preflight(cfg, manager)
        trainer = RLTrainer(cfg, manager, console=console, progress=bars("RL steps"))
        result = trainer.train()
    console.print(trainer.metrics.summary_table())
    failures = trainer.data.failure_watch.summary()
    if failures is not None:
        console.print(escape(failures), style="yellow")
    console.print(
        escape(f"model: {result.final_model}  metrics: {result.output_dir / 'metrics.jsonl'}")
    )
