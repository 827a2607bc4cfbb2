"""The run folder as a guarded unit: one run at a time (a lock), checkpoints of this run
only, nothing written by a refused resume, options changed on resume applied or refused,
the metrics log repaired and rewritten atomically, the usual file permissions."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.checkpoint import current_umask
from lightrft_core.config import load_config
from lightrft_core.plugins import PluginManager
from lightrft_core.trainer import metrics as metrics_module
from lightrft_core.trainer.metrics import rewrite_atomically
from lightrft_core.trainer.resume import ResumeError, RunIdentity, check_resume
from lightrft_core.trainer.rl import RLTrainer
from lightrft_core.trainer.run_folder import LOCK_FILE, RunFolderBusy, hold_run_folder

runner = CliRunner()


def overrides(out: Path, model: Path, prompts: Path, *extra: str) -> list[str]:
    return [
        f"run.output_dir={out}",
        "run.seed=3",
        f"data.train_path={prompts}",
        "data.apply_chat_template=false",
        f"model.path={model}",
        "engine.n_samples_per_prompt=2",
        "engine.max_new_tokens=4",
        "reward.name=constant",
        "trainer.prompts_per_step=2",
        "trainer.micro_batch_size=4",
        "trainer.learning_rate=3e-3",
        "trainer.save_every=1",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (content hash and mode) and every folder."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_dir():
            out[key] = "dir"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[key] = f"{digest} {path.stat().st_mode:o}"
    return out


def train_cli(*args: str):
    return runner.invoke(app, ["train", "--plugin", "grpo", *args])


def error_line(result) -> str:
    """The one line a refused command prints (no traceback)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 2-step run (checkpoints at steps 1 and 2): ``(run folder, model, prompts)``."""
    from lightrft_core.testing.training import build_fast_tiny_model, write_letter_prompts

    root = tmp_path_factory.mktemp("finished")
    model = build_fast_tiny_model(root / "model")
    prompts = write_letter_prompts(root / "prompts.jsonl")
    out = root / "run"
    result = train_cli(*overrides(out, model, prompts, "trainer.max_steps=2"))
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_FILE).exists()  # released at the end
    return out, model, prompts


@pytest.fixture
def run_copy(finished, tmp_path) -> tuple[Path, Path, Path]:
    """A copy of the finished run to resume or refuse."""
    out, model, prompts = finished
    shutil.copytree(out, tmp_path / "run")
    return tmp_path / "run", model, prompts


def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    return pm


def trainer(out: Path, model: Path, prompts: Path, *extra: str) -> RLTrainer:
    pm = manager()
    return RLTrainer(load_config(None, overrides(out, model, prompts, *extra), manager=pm), pm)


# ------------------------------------------------------------------ one run per folder
def test_a_second_run_on_a_held_folder_is_refused(run_copy) -> None:
    out, model, prompts = run_copy
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"host": socket.gethostname(), "pid": holder.pid, "started": "2026-01-02T03:04"}
        (out / LOCK_FILE).write_text(json.dumps(lock))
        before = snapshot(out)
        result = train_cli(*overrides(out, model, prompts, "trainer.max_steps=3"))
        assert result.exit_code == 2
        line = error_line(result)
        assert f"run.output_dir {out} is in use by another run" in line
        assert f"pid {holder.pid} on {socket.gethostname()}, since 2026-01-02T03:04" in line
        assert "set run.output_dir to another folder" in line
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_held_during_a_run_and_released_after_it(tmp_path) -> None:
    lock = hold_run_folder(tmp_path / "run")
    with pytest.raises(RunFolderBusy, match="is in use by another run"):
        hold_run_folder(tmp_path / "run")
    lock.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    hold_run_folder(tmp_path / "run").release()


def test_a_dead_runs_lock_and_unfinished_saves_are_cleaned_up(tmp_path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    (out / "checkpoints" / f".step_000004.tmp-{dead.pid}").mkdir(parents=True)
    (out / "checkpoints" / f".step_000004.tmp-{dead.pid}" / "model.safetensors").write_text("x")
    (out / f".final.tmp-{dead.pid}").mkdir()
    (out / f".metrics.jsonl.tmp-{dead.pid}").write_text("{}")
    live = out / "checkpoints" / f".step_000006.tmp-{os.getpid()}"
    live.mkdir()
    lock = {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-01-02T03:04"}
    (out / LOCK_FILE).write_text(json.dumps(lock))
    with caplog.at_level(logging.WARNING, logger="lightrft.trainer"):
        held = hold_run_folder(out)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {dead.pid}" in caplog.text
    assert "removed 3 unfinished save(s) of killed runs" in caplog.text
    assert sorted(p.name for p in out.rglob(".*.tmp-*")) == [live.name]
    held.release()


# ------------------------------------------------------------------ resume
def test_resume_with_max_steps_not_above_the_checkpoint_is_refused(run_copy) -> None:
    out, model, prompts = run_copy
    before = snapshot(out)
    result = train_cli(
        *overrides(out, model, prompts, "trainer.max_steps=2", "trainer.resume_from=latest")
    )
    assert result.exit_code == 2
    line = error_line(result)
    assert "trainer.max_steps=2 is not above the step of" in line
    assert "step_000002 (2)" in line
    assert "set trainer.max_steps above 2" in line
    assert snapshot(out) == before


def test_resume_of_another_configuration_names_the_keys(run_copy) -> None:
    out, model, prompts = run_copy
    before = snapshot(out)
    result = train_cli(
        *overrides(out, model, prompts, "trainer.max_steps=4", "trainer.resume_from=latest"),
        "model.lora_rank=4",
        "trainer.prompts_per_step=4",
    )
    assert result.exit_code == 2
    line = error_line(result)
    assert "step_000002: it was trained with other values of options that must not change" in line
    assert "model.lora_rank 0 -> 4" in line
    assert "trainer.prompts_per_step 2 -> 4" in line
    assert "start a fresh run in another run.output_dir" in line
    assert snapshot(out) == before


def test_latest_refuses_checkpoints_of_another_run(run_copy) -> None:
    """A fresh run that stopped before its first checkpoint: the checkpoints there are an
    earlier, unrelated run's."""
    out, model, prompts = run_copy
    (out / "run.json").write_text(json.dumps({"id": "0123456789ab"}))
    before = snapshot(out)
    result = train_cli(
        *overrides(out, model, prompts, "trainer.max_steps=4", "trainer.resume_from=latest")
    )
    assert result.exit_code == 2
    line = error_line(result)
    assert "belong to another run than the one last started in this folder" in line
    assert "run.output_dir to another folder, or trainer.resume_from=PATH" in line
    assert snapshot(out) == before


def test_latest_takes_this_runs_checkpoint_not_a_newer_one_of_an_older_run(run_copy) -> None:
    out, model, prompts = run_copy  # the older run's checkpoints: steps 1 and 2
    fresh = train_cli(*overrides(out, model, prompts, "trainer.max_steps=1"))
    assert fresh.exit_code == 0, fresh.output
    resumed = trainer(out, model, prompts, "trainer.max_steps=3", "trainer.resume_from=latest")
    assert resumed.start_step == 1  # not the older run's step 2
    resumed.run.release()


def test_an_explicit_checkpoint_of_another_run_continues_that_run(run_copy, tmp_path) -> None:
    out, model, prompts = run_copy
    checkpoint = out / "checkpoints" / "step_000002"
    other = tmp_path / "other"
    resumed = trainer(
        other, model, prompts, "trainer.max_steps=3", f"trainer.resume_from={checkpoint}"
    )
    assert resumed.start_step == 2
    run_id = json.loads((checkpoint / "run.json").read_text())["id"]
    assert json.loads((other / "run.json").read_text())["id"] == run_id
    resumed.run.release()


def test_a_changed_learning_rate_is_applied_and_said(run_copy, caplog) -> None:
    out, model, prompts = run_copy
    extra = ("trainer.resume_from=latest", "trainer.learning_rate=1e-3", "trainer.eval_every=5")
    with caplog.at_level(logging.WARNING, logger="lightrft.trainer"):
        resumed = trainer(out, model, prompts, "trainer.max_steps=3", *extra)
    changes = [r.getMessage() for r in caplog.records if "changed on resume" in r.getMessage()]
    assert changes == [
        "options changed on resume, applied from step 3: trainer.eval_every 0 -> 5, "
        "trainer.learning_rate 0.003 -> 0.001, trainer.max_steps 2 -> 3"
    ]
    groups = resumed.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3] * len(groups))
    assert resumed.scheduler.base_lrs == pytest.approx([1e-3] * len(groups))
    resumed.train()
    assert resumed.metrics.history[-1]["lr"] == pytest.approx(1e-3)
    assert "learning_rate: 0.001" in (out / "config.yaml").read_text()


def test_each_changed_option_is_refused_or_applied_by_its_key() -> None:
    saved = RunIdentity(
        "run-a",
        {
            "world_size": 2,
            "model.lora_rank": 0,
            "model.gradient_checkpointing": False,
            "trainer.learning_rate": 3e-3,
            "trainer.resume_from": None,
            "run.output_dir": "a",
        },
    )
    current = RunIdentity("run-b", {**saved.config, "world_size": 1, "run.output_dir": "b"})
    with pytest.raises(ResumeError, match=r"must not change: world_size 2 -> 1; set them back"):
        check_resume(saved, current, Path("c"), folder_run=None)
    current.config.update(
        {
            "world_size": 2,
            "model.gradient_checkpointing": True,
            "trainer.learning_rate": 1e-3,
            "trainer.resume_from": "latest",
        }
    )
    assert check_resume(saved, current, Path("c"), folder_run=None) == {
        "model.gradient_checkpointing": (False, True),
        "trainer.learning_rate": (3e-3, 1e-3),
    }
    with pytest.raises(ResumeError, match="belong to another run"):
        check_resume(saved, current, Path("c"), folder_run="run-b")


# ------------------------------------------------------------------ metrics log
def test_a_partial_last_metrics_line_is_repaired_on_resume(run_copy, caplog) -> None:
    out, model, prompts = run_copy
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "reward/me')
    with caplog.at_level(logging.WARNING, logger="lightrft.trainer"):
        resumed = trainer(out, model, prompts, "trainer.max_steps=3", "trainer.resume_from=latest")
    assert "dropped a partial last line" in caplog.text
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == [1, 2]
    resumed.run.release()


def test_the_metrics_log_is_rewritten_atomically(tmp_path, monkeypatch) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')

    def crash(fd: int) -> None:
        raise OSError("killed")

    monkeypatch.setattr(metrics_module.os, "fsync", crash)
    with pytest.raises(OSError, match="killed"):
        rewrite_atomically(path, '{"step": 1}\n')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


# ------------------------------------------------------------------ permissions
def test_checkpoints_and_the_exported_model_follow_the_umask(finished) -> None:
    out = finished[0]
    files = [p for p in (out / "final").rglob("*") if p.is_file()]
    files += [p for p in (out / "checkpoints").rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    mask = current_umask()
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {
        p.name: 0o666 & ~mask for p in files
    }
    assert ((out / "final").stat().st_mode & 0o777) == 0o777 & ~mask


def test_sft_releases_the_run_folder_after_an_error(finished, tmp_path) -> None:
    _, model, _ = finished
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "sft"
    result = runner.invoke(
        app, ["sft", f"run.output_dir={out}", f"model.path={model}", f"data.train_path={empty}"]
    )
    assert result.exit_code == 2
    assert error_line(result).startswith("error: ")
    assert out.is_dir() and not (out / LOCK_FILE).exists()
