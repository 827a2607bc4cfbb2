"""The demo pipeline (tiny sizes: it checks the wiring, not the accuracy lift) and the
commands that use a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.demo.run import CONFIG_FILES, DemoPlan, config_path, run_demo
from lightrft_core.demo.task import ArithmeticTask, estimate, write_task_data
from lightrft_core.plugins import PluginManager

ROOT = Path(__file__).resolve().parent.parent


def test_task_answers_are_right_and_splits_disjoint() -> None:
    import random

    prompt, answer = ArithmeticTask(digits=1, operands=3).problem(random.Random(1))
    assert eval(prompt.rstrip("=")) == int(answer)
    train, held = ArithmeticTask().splits(train=500, held_out=50, seed=0)
    assert len(held) == 50 and len(train) == 500
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("14", "~10"), ("15", "~20"), ("-15", "~-20"), ("-4", "~0"), ("0", "~0"), ("27", "~30")],
)
def test_estimate_rounds_to_the_nearest_ten_halves_away_from_zero(answer, expected) -> None:
    assert estimate(answer) == expected


def test_sft_data_mixes_exact_answers_and_estimates(tmp_path) -> None:
    paths = write_task_data(
        tmp_path, ArithmeticTask(), sft=2000, rl=10, held_out=10, seed=0, estimate_fraction=0.3
    )
    rows = [json.loads(x) for x in paths["sft"].open()]
    estimated = [r for r in rows if r["response"].startswith("~")]
    exact = [r for r in rows if not r["response"].startswith("~")]
    assert 0.25 < len(estimated) / len(rows) < 0.35
    assert all(eval(r["prompt"].rstrip("=")) == int(r["response"]) for r in exact)
    for r in estimated:
        assert r["response"] == estimate(str(eval(r["prompt"].rstrip("="))))
    # the RL and held-out sets always carry the exact answer
    for name in ("train", "eval"):
        for r in (json.loads(x) for x in paths[name].open()):
            assert eval(r["prompt"].rstrip("=")) == int(r["answer"])
    clean = write_task_data(tmp_path / "clean", ArithmeticTask(), sft=200, rl=1, held_out=1, seed=0)
    assert not any("~" in x for x in clean["sft"].read_text().splitlines())
    with pytest.raises(ValueError, match="estimate_fraction"):
        write_task_data(
            tmp_path, ArithmeticTask(), sft=1, rl=1, held_out=1, seed=0, estimate_fraction=1.5
        )


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_shipped_example_configs_are_the_demo_configs(name) -> None:
    example = ROOT / "examples" / ("demo_" + CONFIG_FILES[name])
    assert example.read_text() == config_path(name).read_text()


@pytest.fixture
def manager() -> PluginManager:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    return pm


def test_demo_pipeline_end_to_end(manager, tmp_path) -> None:
    plan = DemoPlan(
        output_dir=tmp_path / "demo",
        sft_examples=64,
        rl_prompts=64,
        held_out=16,
        sft_overrides=["sft.epochs=1", "sft.batch_size=32", "logging.tensorboard=false"],
        rl_overrides=[
            "trainer.max_steps=2",
            "trainer.eval_every=2",
            "trainer.prompts_per_step=4",
            "logging.tensorboard=false",
        ],
    )
    result = run_demo(plan, manager=manager)
    assert 0.0 <= result.accuracy_before <= 1.0 and 0.0 <= result.accuracy_after <= 1.0
    assert result.curves.is_file() and result.curves.suffix == ".png"
    assert (result.final_model / "config.json").is_file()
    sft_records = [json.loads(x) for x in (tmp_path / "demo/sft/metrics.jsonl").open()]
    assert len(sft_records) == 2 and "sft/loss" in sft_records[0]

    runner = CliRunner()
    out = runner.invoke(
        app, ["generate", str(result.rl_dir), "-p", "1+2+3=", "--max-new-tokens", "4"]
    )
    assert out.exit_code == 0, out.output
    assert out.output.startswith("1+2+3=")
    png = tmp_path / "curves2.png"
    out = runner.invoke(app, ["plot", str(result.rl_dir), "-o", str(png)])
    assert out.exit_code == 0 and png.is_file()
    out = runner.invoke(app, ["plot", str(tmp_path)])
    assert out.exit_code == 2 and "no metrics" in out.output
