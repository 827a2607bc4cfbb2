"""Trackers: a short real RL run logs to W&B (offline) and MLflow (a local folder store);
its resume appends to the same tracker runs; a failing tracker is reported once and the run
finishes. The built-in trackers and the fan-out in ``MetricsLogger``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lightrft_core import hookimpl
from lightrft_core.config import load_config
from lightrft_core.interfaces import SamplesTable, TrackedRun, Tracker
from lightrft_core.plugins import PluginManager
from lightrft_core.testing.training import LetterReward, write_letter_prompts
from lightrft_core.trackers import JsonlTracker, TensorBoardTracker, build_trackers
from lightrft_core.trainer.metrics import MetricsLogger


class BrokenTracker(Tracker):
    """Fails on every metrics call (as a tracker whose server is down would)."""

    name: ClassVar[str] = "broken"

    def start(self, run: TrackedRun) -> None:
        pass

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        raise ConnectionError("server down")


class _Plugin:
    @hookimpl
    def lightrft_register_reward_models(self, register: Any) -> None:
        register(LetterReward)

    @hookimpl
    def lightrft_register_trackers(self, register: Any) -> None:
        register(BrokenTracker)


@pytest.fixture(scope="module")
def tracked_runs(tmp_path_factory: pytest.TempPathFactory, fast_tiny_model_dir: Path) -> Any:
    """One run of 2 steps, then its resume to step 3, tracked by jsonl, wandb, mlflow and
    the broken tracker: (output folder, the warnings of each part)."""
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_mlflow.plugin
    import lightrft_plugin_wandb.plugin
    from lightrft_core.trainer.rl import RLTrainer

    manager = PluginManager(autoload=False)
    manager.register(lightrft_plugin_grpo.plugin, name="grpo")
    manager.register(lightrft_plugin_wandb.plugin, name="wandb")
    manager.register(lightrft_plugin_mlflow.plugin, name="mlflow")
    manager.register(_Plugin(), name="test-trackers")
    root = tmp_path_factory.mktemp("tracked")
    prompts = write_letter_prompts(root / "prompts.jsonl", count=8)
    out = root / "run"

    def run(*extra: str) -> list[str]:
        cfg = load_config(
            None,
            [
                f"run.output_dir={out}",
                "run.name=tracked",
                f"data.train_path={prompts}",
                "data.apply_chat_template=false",
                f"model.path={fast_tiny_model_dir}",
                "engine.n_samples_per_prompt=2",
                "engine.max_new_tokens=4",
                "reward.name=letter",
                "trainer.prompts_per_step=2",
                "trainer.micro_batch_size=4",
                "trainer.learning_rate=3e-3",
                "trainer.save_every=1",
                "logging.save_rollouts_every=1",
                "logging.trackers=[console, jsonl, wandb, mlflow, broken]",
                "logging.tracker_options={wandb: {mode: offline}, mlflow: {experiment: tests}}",
                *extra,
            ],
            manager=manager,
        )
        handler = _Records()
        logging.getLogger("lightrft").addHandler(handler)
        try:
            RLTrainer(cfg, manager).train()
        finally:
            logging.getLogger("lightrft").removeHandler(handler)
        return handler.warnings

    first = run("trainer.max_steps=2")
    resumed = run("trainer.max_steps=3", "trainer.resume_from=latest")
    return out, first, resumed


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings.append(record.getMessage())


def test_a_failing_tracker_is_reported_once_and_the_run_finishes(tracked_runs: Any) -> None:
    out, first, resumed = tracked_runs
    for warnings in (first, resumed):
        about = [w for w in warnings if "tracker 'broken'" in w]
        assert about == [
            "tracker 'broken' failed in log_metrics and is off for the rest of the run: "
            "ConnectionError: server down"
        ]
    assert (out / "final" / "model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_wandb_offline_run_has_config_metrics_samples_and_continues(tracked_runs: Any) -> None:
    from lightrft_plugin_wandb.offline import offline_runs, read_offline_run

    out, _, _ = tracked_runs
    run_id = json.loads((out / "run.json").read_text())["id"]
    first, resumed = (read_offline_run(folder) for folder in offline_runs(out / "wandb"))
    assert first["id"] == resumed["id"] == run_id  # the resume continues the same W&B run
    assert first["config"]["trainer.learning_rate"] == 3e-3
    assert first["config"]["engine.n_samples_per_prompt"] == 2
    logged = [
        (row["_step"], row["reward/mean"]) for run in (first, resumed) for row in run["history"]
    ]
    assert [step for step, _ in logged] == [1, 2, 3]
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [value for _, value in logged] == [r["reward/mean"] for r in jsonl]
    table_path = first["history"][0]["rollouts/path"]
    (table_file,) = offline_runs(out / "wandb")[0].glob(f"files/{table_path}")
    table = json.loads(table_file.read_text())
    assert len(table["data"]) == 4  # 2 prompts x 2 samples
    assert {"prompt", "response", "reward"} <= set(table["columns"])
    assert "reward/mean/last" in resumed["summary"]


def test_mlflow_run_has_params_metrics_artifacts_and_continues(tracked_runs: Any) -> None:
    from mlflow.tracking import MlflowClient

    out, _, _ = tracked_runs
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])  # one run across the resume
    run_id = json.loads((out / "run.json").read_text())["id"]
    assert run.data.tags["lightrft.run_id"] == run_id
    assert run.data.params["trainer.learning_rate"] == "0.003"
    assert run.data.params["logging.trackers"] == json.dumps(
        ["console", "jsonl", "wandb", "mlflow", "broken"]
    )
    history = client.get_metric_history(run.info.run_id, "reward/mean")
    assert sorted(m.step for m in history) == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "rollouts")}
    assert artifacts == {f"rollouts/step_00000{s}.json" for s in (1, 2, 3)}
    rows = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "rollouts/step_000003.json", str(out))
        ).read_text()
    )
    assert len(rows) == 4 and rows[0]["step"] == 3
    summary = client.download_artifacts(run.info.run_id, "summary.json", str(out))
    assert "reward/mean/best" in json.loads(Path(summary).read_text())
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


# ---------------------------------------------------------------------- no training loop
class Recording(Tracker):
    name: ClassVar[str] = "recording"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.calls: list[tuple[str, Any]] = []

    def start(self, run: TrackedRun) -> None:
        self.calls.append(("start", run.run_id))

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.calls.append(("metrics", (step, dict(metrics))))

    def log_samples(self, step: int, table: SamplesTable) -> None:
        self.calls.append(("samples", (step, list(table))))

    def log_summary(self, summary: Mapping[str, float]) -> None:
        self.calls.append(("summary", dict(summary)))

    def close(self) -> None:
        self.calls.append(("close", None))


def test_metrics_logger_calls_each_tracker_in_order_with_the_summary(tmp_path: Path) -> None:
    tracker = Recording()
    run = TrackedRun("abc", "demo", tmp_path, {"trainer.learning_rate": 0.1})
    logger = MetricsLogger([tracker], run)
    logger.log(1, {"reward/mean": 0.25, "kl": 0.5})
    logger.log_samples(1, [{"prompt": "p", "reward": 1.0}])
    logger.log(2, {"reward/mean": 0.75, "kl": 0.25})
    logger.close()
    logger.close()  # once only
    # first, last, best (max; min for kl), mean
    summary = {
        "reward/mean/first": 0.25,
        "reward/mean/last": 0.75,
        "reward/mean/best": 0.75,
        "reward/mean/mean": 0.5,
        "kl/first": 0.5,
        "kl/last": 0.25,
        "kl/best": 0.25,
        "kl/mean": 0.375,
    }
    assert tracker.calls == [
        ("start", "abc"),
        ("metrics", (1, {"reward/mean": 0.25, "kl": 0.5})),
        ("samples", (1, [{"prompt": "p", "reward": 1.0}])),
        ("metrics", (2, {"reward/mean": 0.75, "kl": 0.25})),
        ("summary", summary),
        ("close", None),
    ]


def test_jsonl_resume_keeps_the_steps_up_to_the_checkpoint(tmp_path: Path) -> None:
    rows = [{"step": s, "loss": s / 10} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logger = MetricsLogger([JsonlTracker()], TrackedRun("a", "a", tmp_path, {}, resume_step=2))
    assert [r["step"] for r in logger.history] == [1, 2]
    logger.log(3, {"loss": 0.5})
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [*rows[:2], {"step": 3, "loss": 0.5}]


def test_tensorboard_writes_scalars_and_the_samples_text(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = TensorBoardTracker()
    logger = MetricsLogger([tracker], TrackedRun("a", "a", tmp_path, {}))
    logger.log(1, {"loss": 0.5, "nan": float("nan")})
    logger.log_samples(1, [{"prompt": "a|b", "response": "x\ny"}])
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), {"tensors": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5)]
    assert "nan" not in events.Tags()["scalars"]
    text = events.Tensors("rollouts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == "| prompt | response |\n|---|---|\n| a\\|b | x<br>y |"


def test_unknown_tracker_names_and_options_are_errors() -> None:
    manager = PluginManager(autoload=False)
    with pytest.raises(LookupError, match="no tracker named 'wandbb'"):
        build_trackers(["console", "wandbb"], {}, manager)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['mode'\] for tracker 'jsonl'"):
        build_trackers(["jsonl"], {"jsonl": {"mode": "x"}}, manager)
    with pytest.raises(ValueError, match="does not list"):
        build_trackers(["jsonl"], {"wandb": {"mode": "offline"}}, manager)


def test_the_old_switches_leave_their_tracker_out() -> None:
    cfg = load_config(None, ["logging.tensorboard=false"], manager=None)
    assert cfg.logging.active_trackers() == ["console", "jsonl"]
    cfg = load_config(None, ["logging.trackers=[jsonl, wandb]"], manager=None)
    assert cfg.logging.active_trackers() == ["jsonl", "wandb"]
