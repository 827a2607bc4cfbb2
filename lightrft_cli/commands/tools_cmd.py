"""``lightrft generate`` and ``lightrft plot``: use and inspect a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import fail


def _model_folder(path: Path) -> Path:
    """A run folder means its exported ``final`` model; a model folder is used as is."""
    if (path / "final" / "config.json").is_file():
        return path / "final"
    if (path / "config.json").is_file():
        return path
    raise fail(f"{path} is neither a Hugging Face model folder nor a run folder with final/")


def _load_processor(path: Path, folder: Path) -> Any:
    """The processor of the model ``folder``, loaded the way the run's actor loads it (the
    ``model.name`` of a run folder's ``config.yaml``), else by ``Actor.load_processor``;
    ``None`` for a text-only model."""
    import yaml

    from lightrft_core.interfaces import Actor
    from lightrft_core.plugins import get_plugin_manager

    actor_cls: Any = Actor
    run_config = path / "config.yaml"
    if folder != path and run_config.is_file():
        name = (yaml.safe_load(run_config.read_text(encoding="utf-8")) or {})["model"]["name"]
        actor_cls = get_plugin_manager().get_actor(name)
    return actor_cls.load_processor(str(folder))


#: What each media option needs of the model.
_NEEDS = {
    "images": "--image needs a vision-language model",
    "audios": "--audio needs an audio-language model",
}


def generate(
    model: Path = typer.Argument(
        ..., help="A run folder (uses its final/ model) or a model folder."
    ),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Prompt text; repeatable."),
    image: Path | None = typer.Option(
        None,
        "--image",
        help="An image file every prompt asks about (a vision-language model with its "
        "processor; the chat template is applied).",
    ),
    audio: Path | None = typer.Option(
        None,
        "--audio",
        help="An audio file (wav, flac, ogg) every prompt asks about (an audio-language model "
        "with its processor and lightrft-core[audio]; the chat template is applied).",
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Maximum response length."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    chat: bool = typer.Option(
        False, "--chat/--no-chat", help="Format the prompt with the tokenizer's chat template."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
) -> None:
    """Answer prompts with a trained model, about a picture with --image, a sound with
    --audio."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from lightrft_core.data.encoding import PromptEncoder, encode_prompt, format_prompt
    from lightrft_core.data.media import RowProblem
    from lightrft_core.engines.hf import HFEngine, load_generative_model
    from lightrft_core.interfaces import SamplingParams

    folder = _model_folder(model)
    hf_logging.disable_progress_bar()  # stdout carries only the answers
    tokenizer = AutoTokenizer.from_pretrained(folder)
    files = {"images": image, "audios": audio}
    given = {key: str(path) for key, path in files.items() if path is not None}
    options = " ".join(f"--{key[:-1]} {path}" for key, path in given.items())
    processor = _load_processor(model, folder) if given else None
    if given and processor is None:
        needs = "; ".join(_NEEDS[key] for key in given)
        raise fail(
            f"{needs}, but {folder} is a text-only model (it holds no processor: no "
            "processor_config.json or preprocessor_config.json)"
        )
    media: dict[str, Any] = {}
    if not given:
        texts = [format_prompt(tokenizer, p, apply_chat_template=chat) for p in prompt]
        ids = [encode_prompt(tokenizer, t, templated=chat) for t in texts]
    else:  # the processor's chat template places the media; it expands the placeholders
        encoder = PromptEncoder(tokenizer, processor=processor, max_audio_seconds=None)
        rows = [{"prompt": p, **{key: [path] for key, path in given.items()}} for p in prompt]
        try:
            encoded = [encoder.encode(row) for row in rows]
        except RowProblem as exc:
            raise fail(f"{options}: {exc}") from None
        ids = [e.ids for e in encoded]
        media["multimodal"] = [e.multimodal for e in encoded]
    engine = HFEngine()
    engine.setup(model=load_generative_model(str(folder)), tokenizer=tokenizer)
    params = SamplingParams(
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        stop_token_ids=[tokenizer.eos_token_id],
        seed=seed,
    )
    outputs = engine.generate(ids, params, **media)
    for text, out in zip(prompt, outputs, strict=True):
        typer.echo(f"{text}{tokenizer.decode(out.token_ids, skip_special_tokens=True)}")


def plot(
    run_dirs: list[Path] = typer.Argument(
        ..., exists=True, file_okay=False, help="One run folder, or several to compare."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="PNG path (default RUN_DIR/curves.png, comparison.png)."
    ),
) -> None:
    """Draw the reward and accuracy curves of a run, or of several runs on one figure, to
    PNG (default RUN_DIR/curves.png for one run, ./comparison.png for several)."""
    from lightrft_core.trainer.plot import plot_run, plot_runs

    try:
        if len(run_dirs) == 1:
            typer.echo(str(plot_run(run_dirs[0], output)))
        else:
            typer.echo(str(plot_runs(run_dirs, output or Path("comparison.png"))))
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
