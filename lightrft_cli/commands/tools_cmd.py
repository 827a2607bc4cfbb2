"""``lightrft generate`` and ``lightrft plot``: use and inspect a finished run."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import fail


def _model_folder(path: Path) -> Path:
    """A run folder means its exported ``final`` model; a model folder is used as is."""
    if (path / "final" / "config.json").is_file():
        return path / "final"
    if (path / "config.json").is_file():
        return path
    raise fail(f"{path} is neither a Hugging Face model folder nor a run folder with final/")


def generate(
    model: Path = typer.Argument(
        ..., help="A run folder (uses its final/ model) or a model folder."
    ),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Prompt text; repeatable."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Maximum response length."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    chat: bool = typer.Option(
        False, "--chat/--no-chat", help="Format the prompt with the tokenizer's chat template."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
) -> None:
    """Answer prompts with a trained model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from lightrft_core.data.prompts import encode_prompt, format_prompt
    from lightrft_core.engines.hf import HFEngine
    from lightrft_core.interfaces import SamplingParams

    folder = _model_folder(model)
    hf_logging.disable_progress_bar()  # stdout carries only the answers
    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = HFEngine()
    engine.setup(model=AutoModelForCausalLM.from_pretrained(folder), tokenizer=tokenizer)
    texts = [format_prompt(tokenizer, p, apply_chat_template=chat) for p in prompt]
    ids = [encode_prompt(tokenizer, t, templated=chat) for t in texts]
    params = SamplingParams(
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        stop_token_ids=[tokenizer.eos_token_id],
        seed=seed,
    )
    for text, out in zip(prompt, engine.generate(ids, params), strict=True):
        typer.echo(f"{text}{tokenizer.decode(out.token_ids, skip_special_tokens=True)}")


def plot(
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A run folder."),
    output: Path | None = typer.Option(None, "--output", "-o", help="PNG path."),
) -> None:
    """Draw a run's reward and accuracy curves to PNG (default RUN_DIR/curves.png)."""
    from lightrft_core.trainer.plot import plot_run

    try:
        typer.echo(str(plot_run(run_dir, output)))
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
