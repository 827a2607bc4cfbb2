"""``reward.name: judge``: the verdict parsers, the yes-probability and pairwise win rates with
numbers worked out by hand; parse failures counted and given the failure reward; and the
recipe end to end -- a tiny judge trained with ``lightrft sft`` on judgements of the letter
task drives a GRPO run whose reward rises."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core import hookimpl
from lightrft_core.interfaces import RewardInput
from lightrft_core.rewards.judge import JudgeReward, fill_template, reference_text
from lightrft_core.rewards.safe import score_safely
from lightrft_core.rewards.verdicts import (
    DEFAULT_SCORE_PATTERN,
    Match,
    groups_of,
    matches,
    parse_boxed,
    parse_score,
    parse_verdict,
    verdict_pattern,
    win_rates,
    yes_probability,
)
from lightrft_core.testing import RewardConformance

SCORE = re.compile(DEFAULT_SCORE_PATTERN)


# ---------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 7/10", 0.7),
        ("score = 3", 0.3),  # no scale written: / max_score (10)
        ("first Score: 2/4, then SCORE: 9/10", 0.9),  # the last one counts
        ("Score: 2.5 / 5", 0.5),
        ("Score: 12/10", None),  # outside [0, 1]
        ("Score: 1/0", None),
        ("I like it", None),
    ],
)
def test_score_parser(text: str, expected: float | None) -> None:
    got = parse_score(text, SCORE, max_score=10.0)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("text", "max_score", "expected"),
    [
        ("so \\boxed{7}", 10.0, 0.7),
        ("\\boxed{1} then \\boxed{4}", 5.0, 0.8),  # the last box
        ("\\boxed{yes}", 10.0, None),
        ("\\boxed{11}", 10.0, None),
        ("7", 10.0, None),
    ],
)
def test_boxed_parser(text: str, max_score: float, expected: float | None) -> None:
    got = parse_boxed(text, max_score)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", 1.0),
        ("no", 0.0),
        ("At first yes, but on reflection: NO", 0.0),  # the last verdict word decides
        ("Correct!", 1.0),
        ("nothing here; nobody knows", None),  # whole words only
        ("", None),
    ],
)
def test_verdict_parser(text: str, expected: float | None) -> None:
    yes_words = ["yes", "correct"]
    pattern = verdict_pattern(yes_words, ["no", "incorrect"])
    assert parse_verdict(text, pattern, yes_words) == expected


def test_yes_probability_from_hand_made_logits() -> None:
    # vocabulary of 4; yes = 1, no = 2
    logits = torch.tensor([[0.0, 2.0, 0.0, 0.0], [5.0, 0.0, math.log(3.0), 0.0]])
    against_no = yes_probability(logits, yes_id=1, no_id=2)
    # row 0: e^2 / (e^2 + e^0); row 1: 1 / (1 + 3)
    expected = [math.e**2 / (math.e**2 + 1), 0.25]
    assert against_no.tolist() == pytest.approx(expected)
    # over the vocabulary: row 0: e^2 / (e^2 + 3); row 1: 1 / (e^5 + 1 + 3 + 1)
    over_vocab = yes_probability(logits, yes_id=1, no_id=None)
    expected_vocab = [math.e**2 / (math.e**2 + 3), 1 / (math.e**5 + 5)]
    assert over_vocab.tolist() == pytest.approx(expected_vocab)


# ---------------------------------------------------------------------- pairwise
def test_matches_and_groups() -> None:
    assert matches("first", 3) == [Match(1, 0), Match(2, 0)]
    assert matches("round_robin", 3) == [
        Match(0, 1), Match(0, 2), Match(1, 0), Match(1, 2), Match(2, 0), Match(2, 1),
    ]  # fmt: skip
    assert groups_of(["p", "p", "q", "q", "q", "p"]) == [range(0, 2), range(2, 5), range(5, 6)]


def test_win_rates_by_hand() -> None:
    # three responses, round robin; p = probability that A (the first shown) is better
    judged = [
        (Match(0, 1), 1.0),  # 0 beats 1
        (Match(0, 2), 0.5),  # a tie
        (Match(1, 0), 0.0),  # 0 beats 1 again
        (Match(1, 2), None),  # unread: not counted
        (Match(2, 0), 0.0),  # 0 beats 2
        (Match(2, 1), 1.0),  # 2 beats 1
    ]
    rates = win_rates(3, judged)
    # 0: 1 + 0.5 + 1 + 1 over 4 games; 1: 0 + 1 - 1 + 0 over 3; 2: 0.5 + 0 + 1 over 3
    assert rates.tolist() == pytest.approx([3.5 / 4, 0.0, 1.5 / 3])
    # a response whose every judgement was unread has no win rate
    assert torch.isnan(win_rates(2, [(Match(1, 0), None)])).all()


def test_template_filling() -> None:
    template = "Q {question} R {response} ref {reference} \\boxed{}"
    values = {"question": "{response}", "response": "x", "reference": reference_text([1, "2"])}
    # one pass: the question's text '{response}' is not replaced again; other braces stay
    assert fill_template(template, values) == "Q {response} R x ref 1 or 2 \\boxed{}"


# ---------------------------------------------------------------------- the reward
class ScriptedEngine:
    """Answers the judge prompts with scripted texts, in order and round again (stands for
    the judge's engine in the pairwise and failure tests); raises for a call with a prompt
    that holds ``fail_on``."""

    def __init__(self, answers: list[str], fail_on: str | None = None) -> None:
        self.answers = answers
        self.fail_on = fail_on
        self.prompts: list[list[int]] = []

    def generate(self, prompt_token_ids: Any, params: Any, multimodal: Any = None) -> list[Any]:
        from lightrft_core.interfaces import GenerationOutput

        if self.fail_on and any(self.fail_on in bytes(ids).decode() for ids in prompt_token_ids):
            raise RuntimeError(f"the judge broke on {self.fail_on!r}")
        outputs = []
        for index, ids in enumerate(prompt_token_ids):
            self.prompts.append(list(ids))
            text = self.answers[(len(self.prompts) - 1) % len(self.answers)]
            outputs.append(GenerationOutput(index, list(text.encode()), finish_reason="stop"))
        return outputs


def scripted(judge_dir: Path, answers: list[str], **options: Any) -> JudgeReward:
    reward = JudgeReward(JudgeReward.Config(path=str(judge_dir), max_new_tokens=2, **options))
    reward.engine = ScriptedEngine(answers)  # type: ignore[assignment]
    return reward


def test_parse_failures_are_counted_and_get_the_failure_reward(fast_tiny_model_dir) -> None:
    reward = scripted(fast_tiny_model_dir, ["Score: 8/10", "no idea", "Score: 3", "Score: 11"],
                      parser="score", template="{question} {response}")  # fmt: skip
    batch = RewardInput(prompts=["q"] * 4, responses=["a", "b", "c", "d"])
    out = reward.score(batch)
    assert out.sub_scores["judge_parsed"].tolist() == [1.0, 0.0, 1.0, 0.0]
    safe = score_safely(reward, batch, failure_reward=-1.0)
    assert safe.failures == 2
    assert safe.output.rewards.tolist() == pytest.approx([0.8, -1.0, 0.3, -1.0])
    # the judge's raw text of each sample is kept, the unreadable ones included
    expected = {"verdict": ["Score: 8/10", "no idea", "Score: 3", "Score: 11"]}
    assert out.texts == expected and safe.output.texts == expected


def test_pairwise_win_rates_against_the_first(fast_tiny_model_dir) -> None:
    # two groups of 3: judgements (1 vs 0), (2 vs 0) per group, A = the later response
    reward = scripted(fast_tiny_model_dir, ["yes", "no", "no", "garbled"], pairwise="first",
                      template="{response_a}|{response_b}", apply_chat_template=False,
                      scale=2.0, shift=-1.0)  # fmt: skip
    batch = RewardInput(prompts=["p", "p", "p", "q", "q", "q"], responses=list("abcdef"))
    out = reward.score(batch)
    # group p: 1 beat 0, 0 beat 2 -> 0: 1/2, 1: 1, 2: 0
    # group q: 3 beat 4, (5 vs 3) unread -> 3: 1/1, 4: 0, 5: no win rate
    assert out.sub_scores["judge_score"].tolist() == [0.5, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert out.rewards[:5].tolist() == [0.0, 1.0, -1.0, 1.0, -1.0]
    assert math.isnan(out.rewards[5])
    shown = [bytes(ids).decode() for ids in reward.engine.prompts]  # type: ignore[attr-defined]
    assert shown == ["b|a", "c|a", "e|d", "f|d"]
    # each sample's text: the answers of its judgements, one per line
    assert out.texts["verdict"] == ["yes\nno", "yes", "no", "no\ngarbled", "no", "garbled"]


def test_a_judge_that_reads_the_reference_requires_a_label(fast_tiny_model_dir) -> None:
    with_reference = JudgeReward(JudgeReward.Config(path=str(fast_tiny_model_dir)))
    assert with_reference.requires_label
    plain = scripted(fast_tiny_model_dir, [], template="{question}: {response}")
    assert not plain.requires_label


def test_bad_setups_are_refused(fast_tiny_model_dir) -> None:
    with pytest.raises(ValueError, match="needs reward.path"):
        JudgeReward(JudgeReward.Config())
    with pytest.raises(ValueError, match="response_a"):
        JudgeReward.Config(pairwise="first", template="{response}")
    with pytest.raises(ValueError, match="engine=hf"):
        JudgeReward.Config(parser="yes_probability", engine="vllm")
    with pytest.raises(ValueError, match="share a word"):
        JudgeReward.Config(yes_words=["ok"], no_words=["OK"])
    with pytest.raises(ValueError, match="one token"):  # 'yes' is three byte tokens
        JudgeReward(JudgeReward.Config(path=str(fast_tiny_model_dir), parser="yes_probability"))


def test_yes_probability_does_not_depend_on_batching(fast_tiny_model_dir) -> None:
    def reward(batch_size: int) -> JudgeReward:
        config = JudgeReward.Config(
            path=str(fast_tiny_model_dir),
            parser="yes_probability",
            yes_token="y",
            no_token="n",
            batch_size=batch_size,
        )
        return JudgeReward(config)

    batch = RewardInput(
        prompts=["say a1:", "say a22:"], responses=["a", "bbbbbbbb"], labels=["a"] * 2
    )
    together = reward(2).score(batch).rewards
    alone = reward(1).score(batch).rewards  # no padding
    assert torch.allclose(together, alone, atol=1e-5)
    assert ((together > 0) & (together < 1)).all()
    assert reward(2).score(batch).texts == {}  # nothing generated, no text


class TestJudgeRewardConformance(RewardConformance):
    reward_cls = JudgeReward

    @pytest.fixture(autouse=True)
    def _path(self, fast_tiny_model_dir) -> None:
        self.path = fast_tiny_model_dir

    def make_reward(self) -> JudgeReward:  # yes-probability: a finite score for any text
        config = JudgeReward.Config(
            path=str(self.path), parser="yes_probability", yes_token="y", no_token="n",
            template="{question} {response}",
        )  # fmt: skip
        return JudgeReward(config)


# ---------------------------------------------------------------------- the judge's text
def test_score_safely_keeps_the_texts_aligned_when_a_sample_fails(fast_tiny_model_dir) -> None:
    reward = scripted(fast_tiny_model_dir, ["yes", "no"], template="{question} {response}",
                      apply_chat_template=False)  # fmt: skip
    reward.engine.fail_on = "boom"  # type: ignore[attr-defined]
    batch = RewardInput(prompts=["q"] * 3, responses=["a", "boom", "c"])
    safe = score_safely(reward, batch, failure_reward=-1.0)
    # the batch raised; retried one sample at a time, only "boom" fails
    assert safe.failures == 1 and "RuntimeError" in safe.errors
    assert safe.output.rewards.tolist() == [1.0, -1.0, 0.0]
    assert safe.output.texts == {"verdict": ["yes", "", "no"]}


class ScriptedJudge(JudgeReward):
    """A judge whose engine answers ``Score: 7/10``, then ``Score: 2/10``, in turn."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.engine = ScriptedEngine(["Score: 7/10", "Score: 2/10"])  # type: ignore[assignment]


def test_combined_prefixes_each_parts_texts_with_its_name(fast_tiny_model_dir) -> None:
    from lightrft_core.rewards.combined import CombinedReward
    from lightrft_core.testing.training import LetterReward

    judge = {"name": "judge", "path": str(fast_tiny_model_dir), "parser": "score",
             "template": "{question} {response}", "max_new_tokens": 2}  # fmt: skip
    parts = [{**judge, "weight": 0.5}, {**judge, "weight": 1.0}, {"name": "letter"}]
    combined = CombinedReward(
        CombinedReward.Config(rewards=parts),
        resolve={"judge": ScriptedJudge, "letter": LetterReward},
    )
    out = combined.score(RewardInput(prompts=["q", "q"], responses=["a", "b"]))
    # 0.5 * 0.7 + 0.7 + 1 (all "a"); 0.5 * 0.2 + 0.2 + 0 (no "a")
    assert out.rewards.tolist() == pytest.approx([2.05, 0.3])
    verdicts = ["Score: 7/10", "Score: 2/10"]
    assert out.texts == {"judge_0/verdict": verdicts, "judge_1/verdict": verdicts}


class EchoEngine:
    """Answers each judge prompt with the prompt itself and `` -> yes`` (byte tokenizer)."""

    def generate(self, prompt_token_ids: Any, params: Any, multimodal: Any = None) -> list[Any]:
        from lightrft_core.interfaces import GenerationOutput

        return [
            GenerationOutput(i, [*ids, *b" -> yes"], finish_reason="stop")
            for i, ids in enumerate(prompt_token_ids)
        ]


class EchoJudge(JudgeReward):
    """A judge (the tiny model's tokenizer and template) whose engine echoes its prompts."""

    name = "echo_judge"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.engine = EchoEngine()  # type: ignore[assignment]


class EchoJudgePlugin:
    @hookimpl
    def lightrft_register_reward_models(self, register: Any) -> None:
        register(EchoJudge)


def test_the_judges_text_is_saved_with_the_rollouts(fast_tiny_model_dir, tmp_path) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from lightrft_cli.main import app
    from lightrft_core.config import load_config
    from lightrft_core.testing.training import write_letter_prompts
    from lightrft_core.trainer.rl import RLTrainer
    from lightrft_core.trainer.rollouts import rollout_path

    pm = plugins()
    pm.register(EchoJudgePlugin(), name="echo_judge")
    overrides = [
        f"run.output_dir={tmp_path / 'run'}",
        f"data.train_path={write_letter_prompts(tmp_path / 'prompts.jsonl')}",
        "data.apply_chat_template=false",
        f"model.path={fast_tiny_model_dir}",
        "engine.n_samples_per_prompt=2",
        "engine.max_new_tokens=3",
        "reward.name=echo_judge",
        f"reward.path={fast_tiny_model_dir}",
        "reward.template={question}|{response}",
        "reward.apply_chat_template=false",
        "trainer.max_steps=1",
        "trainer.prompts_per_step=2",
        "logging.tensorboard=false",
        "logging.save_rollouts_every=1",
    ]
    trainer = RLTrainer(load_config(None, overrides, manager=pm), pm)
    tables: list[list[dict[str, Any]]] = []
    trainer.metrics.log_samples = lambda step, table: tables.append(list(table))  # type: ignore[method-assign]
    trainer.train()
    frame = pd.read_parquet(rollout_path(tmp_path / "run", 1))
    assert len(frame) == 4 and list(frame.columns)[-1] == "text/verdict"
    # each row holds its own sample's verdict: the judge prompt it echoed
    for row in frame.itertuples():
        assert row[-1] == f"{row.prompt}|{row.response} -> yes"
    assert (frame["reward"] == 1.0).all() and (frame["reward/judge_parsed"] == 1.0).all()
    assert tables[0] == frame.to_dict("records")  # the trackers' samples table too
    shown = CliRunner().invoke(app, ["rollouts", str(tmp_path / "run")], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "text/verdict" in shown.output and "-> yes" in shown.output


@pytest.mark.installed_plugins  # the qwen_vl actor, whose processor encodes the images
def test_a_vision_language_judge_scores_image_prompts(tiny_qwen_vl_dir) -> None:
    from PIL import Image

    from lightrft_core.interfaces import MultiModalInputs

    config = JudgeReward.Config(
        path=str(tiny_qwen_vl_dir), actor="qwen_vl", question_key="question",
        parser="yes_probability", yes_token="y", no_token="n",
        template="{question} {response} ok?",
    )  # fmt: skip
    reward = JudgeReward(config)
    assert reward.accepts_image_prompts
    red, blue = (
        MultiModalInputs([Image.new("RGB", (28, 28), rgb)])
        for rgb in ((220, 30, 30), (30, 30, 220))
    )
    batch = RewardInput(
        prompts=["(the policy's prompt)"] * 3,
        responses=["red"] * 3,
        metadata=[{"question": "colour?"}] * 3,
        multimodal=[red, blue, None],
    )
    safe = score_safely(reward, batch, failure_reward=-1.0)
    rewards = safe.output.rewards
    assert safe.failures == 0 and ((rewards > 0) & (rewards < 1)).all()
    # the judge sees the picture: the same text scores differently with another one
    assert abs(float(rewards[0] - rewards[1])) > 1e-6


# ---------------------------------------------------------------------- the recipe
TEMPLATE = "{question} {response} ok?"
LETTERS = "bcdefghijklmnopqrstuvwxyz0123456789 "


def judgement_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Judgements of the letter task: a response made mostly of 'a' is accepted ('y'), one
    without any is rejected ('n')."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        accepted = rng.random() < 0.5
        alphabet = "aaab" if accepted else LETTERS
        response = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        values = {"question": f"say a{rng.randrange(32)}:", "response": response}
        rows.append(
            {"prompt": fill_template(TEMPLATE, values), "response": "y" if accepted else "n"}
        )
    return rows


def plugins() -> Any:
    import lightrft_plugin_grpo.plugin
    from lightrft_core.plugins import PluginManager

    manager = PluginManager(autoload=False)
    manager.register(lightrft_plugin_grpo.plugin, name="grpo")
    return manager


def train_judge(base: Path, workdir: Path) -> Path:
    """``lightrft sft`` on judgement rows (prompt: the template filled, target: the verdict)."""
    from lightrft_core.config import load_config
    from lightrft_core.trainer.sft import run_sft

    data = workdir / "judgements.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in judgement_rows(512, seed=0)))
    manager = plugins()
    overrides = [
        f"run.output_dir={workdir / 'judge'}",
        "run.seed=0",
        f"model.path={base}",
        f"data.train_path={data}",
        "data.apply_chat_template=false",  # as the judge reads its prompts (fewer tokens)
        "sft.epochs=1",
        "sft.batch_size=16",
        "sft.micro_batch_size=16",
        "sft.learning_rate=5e-3",
        "sft.max_length=64",
        "logging.tensorboard=false",
    ]
    return run_sft(load_config(None, overrides, manager=manager), manager).final_model


@pytest.fixture(scope="module")
def trained_judge(fast_tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_judge(fast_tiny_model_dir, tmp_path_factory.mktemp("judge"))


def judge_options(judge_dir: Path) -> dict[str, Any]:
    return {
        "path": str(judge_dir),
        "template": TEMPLATE,
        "apply_chat_template": False,
        "yes_token": "y",
        "no_token": "n",
    }


def held_out() -> tuple[RewardInput, torch.Tensor]:
    """64 fresh judgements as a reward batch, and whether each response is acceptable."""
    rows = judgement_rows(64, seed=1)
    prompts, responses = [], []
    for row in rows:  # undo the template: "say <question> <response> ok?"
        question, response = row["prompt"][: -len(" ok?")].split(" ", 2)[1:]
        prompts.append("say " + question)
        responses.append(response)
    accepted = torch.tensor([row["response"] == "y" for row in rows]).float()
    return RewardInput(prompts=prompts, responses=responses), accepted


def verdicts_of(judge_dir: Path, batch: RewardInput, **options: Any) -> Any:
    config = JudgeReward.Config(
        parser="verdict", yes_words=["y"], no_words=["n"], max_new_tokens=2,
        **judge_options(judge_dir), **options,
    )  # fmt: skip
    return JudgeReward(config).score(batch)


@pytest.mark.slow
def test_a_judge_trained_with_sft_drives_grpo(fast_tiny_model_dir, trained_judge, tmp_path) -> None:
    from lightrft_core.config import load_config
    from lightrft_core.testing.training import write_letter_prompts
    from lightrft_core.trainer.rl import RLTrainer

    options = judge_options(trained_judge)
    batch, accepted = held_out()
    p_yes = JudgeReward(JudgeReward.Config(parser="yes_probability", **options)).score(batch)
    assert ((p_yes.rewards > 0.5).float() == accepted).float().mean() > 0.9
    # generating, the same judge says y or n, read by the verdict parser
    verdicts = verdicts_of(trained_judge, batch)
    assert verdicts.sub_scores["judge_parsed"].mean() == 1.0
    assert (verdicts.rewards == accepted).float().mean() > 0.9

    pm = plugins()
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path / 'rl'}",
            "run.seed=3",
            f"data.train_path={write_letter_prompts(tmp_path / 'prompts.jsonl')}",
            "data.apply_chat_template=false",
            f"model.path={fast_tiny_model_dir}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=4",
            "reward.name=judge",
            *(f"reward.{key}={value}" for key, value in options.items()),
            "reward.parser=yes_probability",
            "trainer.max_steps=16",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=16",
            "trainer.learning_rate=1e-2",
            "trainer.max_grad_norm=1.0",
            "logging.tensorboard=false",
        ],
        manager=pm,
    )
    history = RLTrainer(cfg, pm).train().history
    rewards = [record["reward/mean"] for record in history]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.25, rewards


#: Run in a child process: an in-process vLLM engine keeps its ``torch.distributed`` group
#: until the interpreter exits, which later tests (that must start without one) would see.
_VLLM_JUDGE = """
import json, os, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import lightrft_plugin_vllm.plugin
from lightrft_core.interfaces import RewardInput
from lightrft_core.plugins import get_plugin_manager
import test_judge_reward as t

get_plugin_manager().register(lightrft_plugin_vllm.plugin, name="vllm")
batch, _ = t.held_out()
batch = RewardInput(prompts=batch.prompts[:16], responses=batch.responses[:16])
judge = Path(sys.argv[2])
hf = t.verdicts_of(judge, batch)
options = {"dtype": "float32", "max_model_len": 128, "enforce_eager": True}
vllm = t.verdicts_of(judge, batch, engine="vllm", engine_options=options)
print(json.dumps({name: {"texts": out.texts, "rewards": out.rewards.tolist()}
                  for name, out in (("hf", hf), ("vllm", vllm))}))
"""


@pytest.mark.slow
def test_a_vllm_judge_gives_the_verdicts_of_the_hf_one(trained_judge) -> None:
    import subprocess
    import sys

    pytest.importorskip("vllm")
    tests_dir = str(Path(__file__).parent)
    run = [sys.executable, "-c", _VLLM_JUDGE, tests_dir, str(trained_judge)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["vllm"]["texts"] == out["hf"]["texts"]  # greedy: the same verdicts
    assert out["vllm"]["rewards"] == out["hf"]["rewards"]
    assert len(out["hf"]["rewards"]) == 16
