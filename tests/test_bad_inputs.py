"""Bad inputs end in one clear line ``error: ...`` and exit status 2, never a traceback."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lightrft_cli.main import app

runner = CliRunner()


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "answer": "a"}) + "\n" for i in range(8))
    )
    return path


def train(model: Path | str, prompts: Path, out: Path, *extra: str):
    args = [
        "train",
        "--plugin",
        "grpo",
        f"run.output_dir={out}",
        f"data.train_path={prompts}",
        "data.apply_chat_template=false",
        f"model.path={model}",
        "engine.n_samples_per_prompt=2",
        "engine.max_new_tokens=2",
        "reward.name=exact_match",
        "trainer.prompts_per_step=2",
        "trainer.micro_batch_size=4",
        "trainer.max_steps=1",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]
    return runner.invoke(app, args)


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit status 2, no traceback, and the ``error:`` line holding every fragment."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------- the model folder
def test_missing_model_folder(prompts: Path, tmp_path: Path) -> None:
    result = train(tmp_path / "nope", prompts, tmp_path / "run")
    assert_one_line_error(result, "model.path: model folder", "nope not found", "config.json")
    assert not (tmp_path / "run").exists()


def test_model_path_that_is_a_file(prompts: Path, tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    result = train(tmp_path / "weights.bin", prompts, tmp_path / "run")
    assert_one_line_error(result, "model.path:", "weights.bin is a file, not a model folder")


def test_folder_without_config_json(prompts: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = train(tmp_path / "empty", prompts, tmp_path / "run")
    assert_one_line_error(result, "not a Hugging Face model folder (no config.json)")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [("truncate", "truncated: "), ("garbage", "not a safetensors file")],
)
def test_damaged_weights(
    fast_tiny_model_dir: Path, prompts: Path, tmp_path: Path, damage: str, problem: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(fast_tiny_model_dir, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 4096)
    result = train(model, prompts, tmp_path / "run")
    assert_one_line_error(result, f"model.path: {weights} is damaged ({problem}", "re-download")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_weights(fast_tiny_model_dir: Path, prompts: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(fast_tiny_model_dir, model)
    (model / "model.safetensors").chmod(0)
    result = train(model, prompts, tmp_path / "run")
    assert_one_line_error(result, "cannot read", "model.safetensors (permission denied)")


def test_markup_in_a_path_is_printed_as_written(prompts: Path, tmp_path: Path) -> None:
    result = train(tmp_path / "[/x]" / "[bold]m", prompts, tmp_path / "run")
    assert_one_line_error(result, "[/x]/[bold]m not found")


# ---------------------------------------------------------------------- device and disk
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine(fast_tiny_model_dir: Path, prompts: Path, tmp_path: Path) -> None:
    result = train(fast_tiny_model_dir, prompts, tmp_path / "run", "strategy.device=cuda")
    assert_one_line_error(result, "strategy.device: 'cuda'", "strategy.device=auto")


def test_output_folder_below_a_file(
    fast_tiny_model_dir: Path, prompts: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("keep")
    result = train(fast_tiny_model_dir, prompts, tmp_path / "file" / "run")
    assert_one_line_error(result, "run.output_dir: cannot write", "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "keep"


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/r/x.pt"), ("/r/x.pt", "disk is full")),
        (OSError(errno.EFBIG, "File too large", "/r/x.pt"), ("/r/x.pt", "ulimit -f")),
        (OSError(errno.EROFS, "Read-only file system", "/r"), ("cannot write /r", "read-only")),
        (OSError(errno.EACCES, "Permission denied", "/r"), ("cannot write /r", "permission")),
        (
            RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                "writing file data/0: file write failed"
            ),
            ("a full disk or a file-size limit", "ulimit -f"),
        ),
    ],
)
def test_failed_writes_during_training(
    fast_tiny_model_dir: Path,
    prompts: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    fragments: tuple[str, ...],
) -> None:
    import lightrft_core.trainer.rl as rl

    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(rl, "RLTrainer", broken)
    result = train(fast_tiny_model_dir, prompts, tmp_path / "run")
    assert_one_line_error(result, *fragments)


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused_with_their_line(tmp_path: Path, value: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"trainer:\n  max_steps: 3\n  learning_rate: {value}\n")
    result = runner.invoke(app, ["config", "validate", str(config), "reward.name=constant"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"{config}:3: trainer.learning_rate: expected a finite number" in result.output


def validate(tmp_path: Path, *overrides: str):
    config = tmp_path / "empty.yaml"
    config.write_text("reward:\n  name: constant\n")
    return runner.invoke(app, ["config", "validate", str(config), *overrides])


def test_non_finite_override_is_refused(tmp_path: Path) -> None:
    result = validate(tmp_path, "trainer.kl_target=nan")
    assert result.exit_code == 2, result.output
    assert "command line 'trainer.kl_target=nan': trainer.kl_target: expected a finite" in (
        result.output
    )


def test_eval_max_prompts_zero_is_refused(tmp_path: Path) -> None:
    result = validate(tmp_path, "trainer.eval_max_prompts=0")
    assert result.exit_code == 2, result.output
    assert "trainer.eval_max_prompts must be > 0, got 0" in result.output


# ---------------------------------------------------------------------- data
@pytest.mark.parametrize("label", [{"value": 1}, True, [1, {"a": 2}]])
def test_labels_of_the_wrong_type(fast_tiny_model_dir: Path, tmp_path: Path, label: object) -> None:
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "q0", "answer": "a"}, {"prompt": "q1", "answer": label}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = train(fast_tiny_model_dir, data, tmp_path / "run")
    assert_one_line_error(result, f"{data}:2: 'answer' must be text, a number or a list")


def write_prompts(path: Path, lengths: list[int]) -> Path:
    path.write_text("".join(json.dumps({"prompt": "x" * n, "answer": "a"}) + "\n" for n in lengths))
    return path


def test_too_many_long_prompts_stop_the_run(fast_tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_prompts(tmp_path / "p.jsonl", [4, 4, 50, 50, 50])  # 3 of 5 dropped: 60%
    result = train(fast_tiny_model_dir, data, tmp_path / "run", "data.max_prompt_length=10")
    assert_one_line_error(
        result, "3 of 5 prompts (60%) are longer than data.max_prompt_length=10", "max_dropped"
    )


def test_dropped_prompts_are_a_warning_with_the_count(
    fast_tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_prompts(tmp_path / "p.jsonl", [4, 4, 4, 50])
    with caplog.at_level(logging.WARNING, logger="lightrft.data"):
        result = train(fast_tiny_model_dir, data, tmp_path / "run", "data.max_prompt_length=10")
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{data}: dropped 1 of 4 prompt(s), longer than data.max_prompt_length=10" in (
        "\n".join(warnings)
    )


def test_max_dropped_fraction_must_be_a_share(tmp_path: Path) -> None:
    result = validate(tmp_path, "data.max_dropped_fraction=1.5")
    assert result.exit_code == 2
    assert "data.max_dropped_fraction must be in [0, 1], got 1.5" in result.output


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    ("file", "problem"),
    [("model.safetensors", "is damaged (truncated: "), ("training_state.pt", "is damaged (")],
)
def test_damaged_checkpoint_is_refused_on_resume(
    fast_tiny_model_dir: Path, prompts: Path, tmp_path: Path, file: str, problem: str
) -> None:
    out = tmp_path / "run"
    assert train(fast_tiny_model_dir, prompts, out, "trainer.save_every=1").exit_code == 0
    checkpoint = out / "checkpoints" / "step_000001"
    data = (checkpoint / file).read_bytes()
    (checkpoint / file).write_bytes(data[: len(data) // 2])
    metrics = (out / "metrics.jsonl").read_bytes()
    result = train(
        fast_tiny_model_dir,
        prompts,
        out,
        "trainer.save_every=1",
        "trainer.max_steps=2",
        "trainer.resume_from=latest",
    )
    assert_one_line_error(result, f"checkpoint {checkpoint}: {file} {problem}", "earlier")
    assert (out / "metrics.jsonl").read_bytes() == metrics


def test_checkpoint_of_another_model_size(tmp_path: Path) -> None:
    from lightrft_core.checkpoint import CheckpointError
    from lightrft_core.strategies.local import LocalStrategy

    strategy = LocalStrategy(LocalStrategy.Config(device="cpu"))
    strategy.setup_distributed()
    strategy.save_checkpoint(tmp_path / "ckpt", model=torch.nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match=r"does not fit the model \(another model size"):
        strategy.load_checkpoint(tmp_path / "ckpt", model=torch.nn.Linear(4, 5))


def test_markup_in_a_plugin_path_is_printed_as_written(tmp_path: Path) -> None:
    spec = str(tmp_path / "[/x]" / "[red]plugin.py")
    result = runner.invoke(app, ["plugins", "--plugin", spec])
    assert_one_line_error(result, "[/x]/[red]plugin.py")
