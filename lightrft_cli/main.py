"""The ``lightrft`` application: global options, sub-commands, plugin commands."""

from __future__ import annotations

import logging
import os
import sys

import typer

from lightrft_core import __version__

from .commands import (
    config_cmd,
    demo_cmd,
    plugin_cmd,
    plugins_cmd,
    rm_cmd,
    rollouts_cmd,
    sft_cmd,
    tools_cmd,
    train_cmd,
)

app = typer.Typer(
    name="lightrft",
    help=(
        "LightRFT: reinforcement fine-tuning (RLHF and RLVR) for language, vision-language "
        "and audio-language models. A slim core plus plugins: see 'lightrft plugins'."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lightrft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """LightRFT command line."""


app.command("plugins", help="List installed plugins, their versions and components.")(
    plugins_cmd.plugins
)
app.command(
    "train",
    help="Train with RL from a YAML config and key=value overrides.",
    context_settings={"allow_extra_args": False},
)(train_cmd.train)
app.command("sft", help="Supervised fine-tuning on prompt/response data (warm start).")(sft_cmd.sft)
app.command("rm", help="Train a reward model on preference pairs (for reward.name=model).")(
    rm_cmd.rm
)
app.command(
    "demo",
    help="End-to-end demo on CPU: a tiny model, SFT then RL. --task text (arithmetic), "
    "vision (colours in pictures, lightrft-plugin-qwen-vl) or audio (the pitch of a tone, "
    "lightrft-plugin-qwen-audio).",
)(demo_cmd.demo)
app.command("generate", help="Answer prompts with a trained model or run folder.")(
    tools_cmd.generate
)
app.command(
    "plot", help="Draw a run's reward and accuracy curves to PNG, or compare several runs."
)(tools_cmd.plot)
app.command("rollouts", help="Print a run's saved rollouts (samples, rewards) as a table.")(
    rollouts_cmd.rollouts
)
app.add_typer(config_cmd.app, name="config", help="Show, validate and document configurations.")
app.add_typer(plugin_cmd.app, name="plugin", help="Create a new plugin package.")


def main() -> None:
    """Console-script entry point: load plugin commands, then run."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own bars only
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if sys.argv[1:] not in (["--version"], ["-V"]):  # plugins cannot change the version
        from lightrft_core.plugins import get_plugin_manager

        get_plugin_manager().add_cli_commands(app)
    app()
