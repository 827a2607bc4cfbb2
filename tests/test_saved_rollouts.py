"""Saved rollouts (logging.save_rollouts_every): a 5-step run's Parquet files read back with
pandas/pyarrow and through ``lightrft rollouts``; the atomic write; ``--filter`` parsing;
the rows of two ranks gathered. The same run profiles steps 2-3 (trainer.profile_steps; the
profiler's own tests are in test_profiling.py)."""

from __future__ import annotations

import json
import math
from io import StringIO

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.config import load_config
from lightrft_core.plugins import PluginManager
from lightrft_core.testing.training import LetterPlugin, ThreadGroup, write_letter_prompts
from lightrft_core.trainer import rollouts
from lightrft_core.trainer.rl import RLTrainer
from lightrft_core.trainer.rollouts import (
    gather_rows,
    parse_filter,
    read_rollouts,
    rollout_path,
    select_rows,
    write_rollouts,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def run(fast_tiny_model_dir, tmp_path_factory):
    """A 5-step GRPO run (4 prompts x 4 samples) saving rollouts every step, profiling
    steps 2-3; its folder, history, the samples tables and the console's text."""
    import lightrft_plugin_grpo.plugin

    work = tmp_path_factory.mktemp("rollouts")
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(LetterPlugin(), name="letter")
    cfg = load_config(
        None,
        [
            f"run.output_dir={work / 'run'}",
            "run.seed=3",
            f"data.train_path={write_letter_prompts(work / 'prompts.jsonl')}",
            "data.apply_chat_template=false",
            f"model.path={fast_tiny_model_dir}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=5",
            "reward.name=letter",
            "trainer.max_steps=5",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=16",
            "trainer.learning_rate=1e-2",
            "logging.tensorboard=false",
            "logging.save_rollouts_every=1",
            "trainer.profile_steps=[2,3]",
        ],
        manager=pm,
    )
    console = Console(file=StringIO(), width=200)
    trainer = RLTrainer(cfg, pm, console=console)
    samples: list[tuple[int, list[dict]]] = []
    log_samples = trainer.metrics.log_samples
    trainer.metrics.log_samples = lambda step, table: (  # type: ignore[method-assign]
        samples.append((step, list(table))),
        log_samples(step, table),
    )
    history = trainer.train().history
    return work / "run", history, samples, console.file.getvalue()  # type: ignore[attr-defined]


def test_a_5_step_run_saves_every_sample_of_every_step(run) -> None:
    out, history, samples, _ = run
    assert rollouts.saved_steps(out) == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (out / "rollouts").iterdir()) == [
        f"step_00000{i}.parquet" for i in range(1, 6)
    ]
    frame = pd.read_parquet(rollout_path(out, 3))
    assert list(frame.columns) == [
        "step",
        "rank",
        "group",
        "sample",
        "prompt",
        "response",
        "label",
        "reward",
        "reward/accuracy",
        "advantage",
        "response_length",
        "truncated",
        "logprob_mismatch",
    ]
    assert len(frame) == 16 and (frame["step"] == 3).all() and (frame["rank"] == 0).all()
    assert list(frame["group"]) == [g for g in range(4) for _ in range(4)]
    assert list(frame["sample"]) == [s for _ in range(4) for s in range(4)]
    assert all(p.startswith("say a") for p in frame["prompt"]) and set(frame["label"]) == {"a"}
    # the letter reward: the fraction of the response's characters that are "a"
    for response, reward in zip(frame["response"], frame["reward"], strict=True):
        assert reward == pytest.approx(response.count("a") / max(1, len(response)), abs=1e-6)
    assert (frame["reward/accuracy"] == (frame["reward"] > 0.5).astype(float)).all()
    # GRPO: (reward - group mean) / (group std + eps), the same on every token
    for _, group in frame.groupby("group"):
        r = torch.tensor(group["reward"].to_numpy())
        expected = (r - r.mean()) / (r.std() + 1e-6)
        assert group["advantage"].to_numpy() == pytest.approx(expected.numpy(), abs=1e-4)
    assert frame["response_length"].between(0, 5).all()
    assert (frame["truncated"] == (frame["response_length"] == 5)).all()
    # hf engine log-probs vs the training forward: both exist, close (same weights)
    assert frame["logprob_mismatch"].notna().all() and (frame["logprob_mismatch"] < 1e-2).all()
    assert history[2]["reward/mean"] == pytest.approx(frame["reward"].mean(), abs=1e-6)
    schema = pq.read_schema(rollout_path(out, 3))
    assert str(schema.field("response_length").type) == "int64"
    assert str(schema.field("truncated").type) == "bool"
    # the trackers got the same rows
    assert [step for step, _ in samples] == [1, 2, 3, 4, 5]
    assert samples[2][1] == frame.to_dict("records")


def test_lightrft_rollouts_prints_the_latest_step_and_filters(run) -> None:
    out, _, _, _ = run
    result = runner.invoke(app, ["rollouts", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "step 5" in result.output and "16 of 16 samples" in result.output
    _, rows = read_rollouts(out, 2)
    worst = min(r["reward"] for r in rows)
    result = runner.invoke(
        app,
        ["rollouts", str(out), "--step", "2", "--worst", "1", "--filter", "length>=0"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "step 2" in result.output and "1 of 16 samples" in result.output
    assert f"{worst:.3f}" in result.output
    bad = runner.invoke(app, ["rollouts", str(out), "--filter", "rewrd<0.5"])
    assert bad.exit_code == 2
    assert "no column 'rewrd'" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["rollouts", str(out), "--step", "9"])
    assert missing.exit_code == 2 and "saved steps: 1, 2, 3, 4, 5" in missing.output


def test_the_run_profiles_steps_2_to_3_and_prints_the_top_operators(run) -> None:
    out, _, _, printed = run
    assert [p.name for p in (out / "profile").iterdir()] == ["steps_2-3_rank0.json"]
    events = json.loads((out / "profile" / "steps_2-3_rank0.json").read_text())["traceEvents"]
    phases = [e["name"] for e in events if e.get("name", "").startswith("phase/")]
    for phase in ("generate", "reward", "logprobs", "train", "sync"):
        assert phases.count(f"phase/{phase}") == 2, phase  # steps 2 and 3 only
    assert "Top operators per phase, steps 2-3" in printed
    assert "aten::" in printed and "steps_2-3_rank0.json" in printed


def rows_with(responses: list[str], rewards: list[float]) -> list[dict]:
    return [
        {
            "step": 7,
            "rank": 0,
            "group": i // 2,
            "sample": i % 2,
            "prompt": "p",
            "response": text,
            "label": None,
            "reward": reward,
            "advantage": reward - 0.5,
            "response_length": len(text),
            "truncated": False,
            "logprob_mismatch": None,
        }
        for i, (text, reward) in enumerate(zip(responses, rewards, strict=True))
    ]


def test_the_table_escapes_markup_and_truncates_long_responses(tmp_path) -> None:
    long = "x" * 500 + "TAIL"
    rows = rows_with(["[red]bold[/red] [/]", long], [0, 1])
    rows[0]["text/verdict"], rows[1]["text/verdict"] = "[b]yes[/b]", "y" * 500 + "VERDICT_END"
    write_rollouts(rollout_path(tmp_path, 7), rows)
    assert str(pq.read_schema(rollout_path(tmp_path, 7)).field("text/verdict").type) == "string"
    result = runner.invoke(app, ["rollouts", str(tmp_path)], env={"COLUMNS": "600"})
    assert result.exit_code == 0, result.output
    assert "[red]bold[/red] [/]" in result.output and "TAIL" not in result.output
    assert "text/verdict" in result.output and "[b]yes[/b]" in result.output
    assert "VERDICT_END" not in result.output
    full = runner.invoke(app, ["rollouts", str(tmp_path), "--full"], env={"COLUMNS": "1500"})
    assert full.exit_code == 0 and "TAIL" in full.output and "VERDICT_END" in full.output


def test_a_run_without_saved_rollouts_is_one_clear_error(tmp_path) -> None:
    result = runner.invoke(app, ["rollouts", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds no saved rollouts" in result.output and "save_rollouts_every" in result.output


def test_a_crash_during_the_write_leaves_no_half_file(tmp_path, monkeypatch) -> None:
    path = rollout_path(tmp_path, 7)
    write_rollouts(path, rows_with(["old"], [0.25]))
    original = pq.ParquetWriter.write_table

    def write_then_fail(self, table, *args, **kwargs):
        original(self, table, *args, **kwargs)  # bytes reach the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_rollouts(path, rows_with(["new", "rows"], [1.0, 0.0]))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert pq.read_table(path).to_pylist()[0]["response"] == "old"
    with pytest.raises(OSError, match="disk full"):
        write_rollouts(rollout_path(tmp_path, 8), rows_with(["new"], [1.0]))
    assert rollouts.saved_steps(tmp_path) == [7]


COLUMNS = list(rows_with(["a"], [0.0])[0])


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("reward<0.5", ["aa", "b"]),
        ("reward >= 0.5", ["ccc", "[x]"]),
        ("length>2", ["ccc", "[x]"]),
        ("length=1", ["b"]),
        ("reward!=0", ["b", "ccc", "[x]"]),
        ("text~^c+$", ["ccc"]),
        ("response!~a", ["b", "ccc", "[x]"]),
        ("text~\\[x\\]", ["[x]"]),
        ("response==b", ["b"]),
        ("mismatch<1", []),  # null never matches
    ],
)
def test_filters_keep_the_rows_they_describe(text, kept) -> None:
    rows = rows_with(["aa", "b", "ccc", "[x]"], [0.0, 0.25, 0.75, 1.0])
    assert [r["response"] for r in select_rows(rows, [parse_filter(text, COLUMNS)])] == kept


def test_filters_match_the_rewards_texts() -> None:
    rows = rows_with(["aa", "b", "ccc"], [0.0, 0.25, 0.75])
    for row, verdict in zip(rows, ["yes", "no idea", None], strict=True):
        row["text/verdict"] = verdict
    columns = list(rows[0])
    picked = select_rows(rows, [parse_filter("text/verdict~^no", columns)])
    assert [r["response"] for r in picked] == ["b"]  # a null text matches nothing
    picked = select_rows(rows, [parse_filter("text/verdict!=yes", columns)])
    assert [r["response"] for r in picked] == ["b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reward", "write COLUMN OP VALUE"),
        ("rewrd<0.5", "no column 'rewrd'"),
        ("reward<high", "'high' is not a number"),
        ("reward~a", "matches text"),
        ("text<a", "compare text with"),
        ("text~(", "not a regular expression"),
    ],
)
def test_a_bad_filter_says_what_is_wrong(text, message) -> None:
    with pytest.raises(ValueError, match="bad filter") as error:
        parse_filter(text, COLUMNS)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_worst_and_best_pick_by_reward() -> None:
    rows = rows_with(["a", "b", "c", "d"], [0.5, 0.0, 1.0, 0.75])
    assert [r["response"] for r in select_rows(rows, worst=2)] == ["b", "a"]
    assert [r["response"] for r in select_rows(rows, best=2)] == ["c", "d"]
    assert [r["response"] for r in select_rows(rows, worst=1, best=9)] == ["b", "c", "d", "a"]


class TwoRanks:
    """A 2-rank strategy in threads: all_gather through a ThreadGroup's slots."""

    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, 2

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.group.slots[self.rank] = tensor.clone()
        self.group.barrier.wait()
        every = torch.cat([s for s in self.group.slots if s is not None])
        self.group.barrier.wait()
        return every


def test_the_rows_of_every_rank_are_gathered_in_rank_order() -> None:
    group = ThreadGroup(2)
    local = [rows_with(["é[b]", ""], [0.0, 1.0]), rows_with(["long" * 50], [0.5])]
    local[1][0]["label"], local[1][0]["rank"], local[1][0]["logprob_mismatch"] = "a", 1, 0.125
    results = group.run(
        [lambda _, r=r: gather_rows(TwoRanks(group, r), local[r]) for r in range(2)]
    )
    expected = local[0] + local[1]
    assert results[0] == expected and results[1] == expected
    assert isinstance(results[0][0]["response_length"], int) and results[0][0]["label"] is None
    assert math.isclose(results[0][2]["logprob_mismatch"], 0.125)


def test_a_reward_text_that_one_rank_lacks_is_null_in_its_rows() -> None:
    # rank 1's batch failed as a whole: its rows have no verdict (nor a note)
    group = ThreadGroup(2)
    local = [rows_with(["a", "b"], [0.0, 1.0]), rows_with(["c"], [0.5])]
    for row, verdict in zip(local[0], ["yes ✓", ""], strict=True):
        row["text/verdict"], row["text/note"] = verdict, "n"
    results = group.run(
        [lambda _, r=r: gather_rows(TwoRanks(group, r), local[r]) for r in range(2)]
    )
    assert results[0] == results[1]
    assert [(r["response"], r["text/note"], r["text/verdict"]) for r in results[0]] == [
        ("a", "n", "yes ✓"), ("b", "n", ""), ("c", None, None),
    ]  # fmt: skip
    assert list(results[0][0])[-2:] == ["text/note", "text/verdict"]
