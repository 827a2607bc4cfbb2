"""Rule rewards, their combination, and failure-tolerant scoring."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from lightrft_core.interfaces import RewardInput, RewardModel, RewardOutput
from lightrft_core.rewards import (
    CombinedReward,
    ExactMatchReward,
    FormatReward,
    MathReward,
    extract_answer,
    extract_boxed,
    last_number,
    reset_failure_log,
    score_safely,
)
from lightrft_core.testing import RewardConformance

REWARDS = {cls.name: cls for cls in (MathReward, ExactMatchReward, FormatReward)}


def batch_of(responses: list[str], labels: list[Any] | None = None) -> RewardInput:
    return RewardInput(prompts=["q"] * len(responses), responses=responses, labels=labels)


# ---------------------------------------------------------------------- conformance
class TestMathConformance(RewardConformance):
    reward_cls = MathReward


class TestExactMatchConformance(RewardConformance):
    reward_cls = ExactMatchReward


class TestFormatConformance(RewardConformance):
    reward_cls = FormatReward


class TestCombinedConformance(RewardConformance):
    reward_cls = CombinedReward

    def make_reward(self) -> RewardModel:
        config = CombinedReward.Config(
            rewards=[{"name": "math"}, {"name": "format", "weight": 0.5, "pattern": r".*\d.*"}]
        )
        return CombinedReward(config, resolve=REWARDS)


# ---------------------------------------------------------------------- math
@pytest.mark.parametrize(
    ("response", "label", "correct"),
    [
        ("\\boxed{42}", "42", True),
        ("the answer is 17.", "17", True),
        ("-3", "-3", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("so it is 3/4", "0.75", True),
        ("\\boxed{2x+x}", "3x", True),
        ("\\boxed{\\sqrt{2}}", "2^{1/2}", True),
        ("We get \\boxed{1,000} apples", "1000", True),
        ("\\boxed{10}", 10, True),
        ("\\boxed{12} but then 13", "12", True),  # the boxed answer wins over the last number
        ("\\boxed{3}", "4", False),
        ("\\boxed{2x}", "3x", False),
        ("no answer here", "5", False),
        ("\\boxed{5", "5", True),  # unclosed box: falls back to the last number
        ("\\boxed{5}", None, False),
        ("\\boxed{0.5}", ["1/3", "1/2"], True),  # any of several accepted answers
        ("\\boxed{\\text{Paris}}", "Paris", True),
    ],
)
def test_math_answers(response: str, label: Any, correct: bool) -> None:
    assert MathReward().is_correct(response, label) is correct


def test_answer_extraction() -> None:
    assert extract_boxed("so \\boxed{\\frac{a}{b}} done") == "\\frac{a}{b}"
    assert extract_boxed("\\boxed{1} and \\boxed{ {2} }") == " {2} "
    assert extract_boxed("\\fbox{7}") == "7"
    assert extract_boxed("\\boxed{unclosed") is None
    assert last_number("from -3 to 4.5, i.e. 1,200 steps") == "1,200"
    assert last_number("none") is None
    assert extract_answer("x 7", fallback_last_number=False) is None


def test_math_rewards_and_accuracy_sub_score() -> None:
    reward = MathReward(MathReward.Config(correct_reward=2.0, incorrect_reward=-1.0))
    out = reward.score(batch_of(["\\boxed{4}", "5", ""], ["4", "4", "4"]))
    assert out.rewards.tolist() == [2.0, -1.0, -1.0]
    assert out.sub_scores["accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert out.sub_scores["math"].tolist() == [2.0, -1.0, -1.0]
    no_fallback = MathReward(MathReward.Config(fallback_last_number=False))
    assert no_fallback.score(batch_of(["so 4"], ["4"])).rewards.tolist() == [0.0]


def test_math_config_is_validated() -> None:
    with pytest.raises(ValueError, match="correct_reward must be finite"):
        MathReward.Config(correct_reward=float("nan"))
    with pytest.raises(ValueError, match="timeout_seconds must be positive or null"):
        MathReward.Config(timeout_seconds=0)


def test_math_reward_works_outside_the_main_thread() -> None:
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(MathReward().is_correct("\\boxed{\\frac{2}{4}}", "0.5"))
        except Exception as exc:  # pragma: no cover - the failure being tested for
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert results == [True]


# ---------------------------------------------------------------------- exact match, format
def test_exact_match() -> None:
    labels = ["Paris", "Paris", "Paris", None]
    out = ExactMatchReward().score(batch_of(["  Paris\n", "paris", "\\boxed{Paris}", "x"], labels))
    assert out.rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert out.sub_scores["exact_match"].tolist() == [1.0, 0.0, 0.0, 0.0]
    loose = ExactMatchReward(ExactMatchReward.Config(ignore_case=True, extract_boxed=True))
    out = loose.score(batch_of(["so \\boxed{ PARIS }", "Paris", "\\boxed{Rome}"], ["paris"] * 3))
    assert out.rewards.tolist() == [1.0, 0.0, 0.0]


def test_format_reward() -> None:
    responses = ["<think>a\nb</think> <answer>4</answer>", "<answer>4</answer>", "x <think>"]
    assert FormatReward().score(batch_of(responses)).rewards.tolist() == [1.0, 0.0, 0.0]
    search = FormatReward(FormatReward.Config(pattern=r"<think>", full_match=False))
    assert search.score(batch_of(responses)).rewards.tolist() == [1.0, 0.0, 1.0]


def test_format_reward_refuses_a_bad_pattern() -> None:
    with pytest.raises(ValueError) as info:
        FormatReward.Config(pattern="(unclosed")
    assert str(info.value).startswith(
        "pattern '(unclosed' is not a valid regular expression: missing ), unterminated subpattern"
    )


# ---------------------------------------------------------------------- combined
def test_combined_weights_and_sub_scores() -> None:
    config = CombinedReward.Config(
        rewards=[
            {"name": "math", "weight": 1.0},
            {"name": "format", "weight": 0.2, "pattern": r".*\\boxed\{.*\}.*"},
        ]
    )
    reward = CombinedReward(config, resolve=REWARDS)
    out = reward.score(batch_of(["\\boxed{4}", "\\boxed{5}", "4"], ["4", "4", "4"]))
    assert torch.allclose(out.rewards, torch.tensor([1.2, 0.2, 1.0]))
    assert out.sub_scores["math"].tolist() == [1.0, 0.0, 1.0]
    assert out.sub_scores["format"].tolist() == [1.0, 1.0, 0.0]
    assert out.sub_scores["accuracy"].tolist() == [1.0, 0.0, 1.0]


def test_combined_requires_a_label_when_a_part_does() -> None:
    with_math = CombinedReward.Config(rewards=[{"name": "math"}, {"name": "format"}])
    only_format = CombinedReward.Config(rewards=[{"name": "format"}])
    assert CombinedReward(with_math, resolve=REWARDS).requires_label is True
    assert CombinedReward(only_format, resolve=REWARDS).requires_label is False


def test_combined_repeated_names_get_indexed_keys() -> None:
    config = CombinedReward.Config(
        rewards=[
            {"name": "format", "pattern": "a", "full_match": False},
            {"name": "format", "pattern": "b", "full_match": False, "weight": -1},
        ]
    )
    out = CombinedReward(config, resolve=REWARDS).score(batch_of(["ab", "a"]))
    assert set(out.sub_scores) == {"format_0", "format_1"}
    assert out.rewards.tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "format", "patern": "x"},
            "rewards[1] (format): unknown option 'patern'; did you mean 'pattern'?",
        ),
        (
            {"name": "format", "colour": "x"},
            "rewards[1] (format): unknown option 'colour' (valid: full_match, pattern)",
        ),
        (
            {"name": "format", "full_match": "yes"},
            "rewards[1] (format): option 'full_match': expected true or false, got 'yes'",
        ),
        (
            {"name": "format", "pattern": "("},
            "rewards[1] (format): pattern '(' is not a valid regular expression",
        ),
        ({"name": "fromat"}, "rewards[1]: no reward named 'fromat'; did you mean 'format'?"),
    ],
)
def test_combined_entry_errors(entry: dict[str, Any], message: str) -> None:
    config = CombinedReward.Config(rewards=[{"name": "math"}, entry])
    with pytest.raises(ValueError) as info:
        CombinedReward(config, resolve=REWARDS)
    assert str(info.value).startswith(message)


def test_combined_config_is_validated() -> None:
    with pytest.raises(ValueError, match="at least one"):
        CombinedReward.Config(rewards=[])
    with pytest.raises(ValueError, match=r"rewards\[0\] needs a 'name'"):
        CombinedReward.Config(rewards=[{"weight": 1.0}])
    with pytest.raises(ValueError, match=r"rewards\[0\]\.weight must be a number, got 'x'"):
        CombinedReward.Config(rewards=[{"name": "math", "weight": "x"}])


def test_combined_resolves_through_a_callable() -> None:
    def lookup(name: str) -> type[RewardModel]:
        if name not in REWARDS:
            raise LookupError(f"no reward named {name!r} is installed")
        return REWARDS[name]

    CombinedReward(CombinedReward.Config(rewards=[{"name": "exact_match"}]), resolve=lookup)
    with pytest.raises(ValueError, match=r"rewards\[0\]: no reward named 'nope' is installed"):
        CombinedReward(CombinedReward.Config(rewards=[{"name": "nope"}]), resolve=lookup)


# ---------------------------------------------------------------------- safe scoring
class Flaky(RewardModel):
    """Raises on responses containing 'boom', returns NaN for 'nan', else the length."""

    name = "flaky"

    @dataclass
    class Config:
        dummy: int = field(default=0, metadata={"help": "Unused."})

    def score(self, batch: RewardInput) -> RewardOutput:
        values = []
        for response in batch.responses:
            if "boom" in response:
                raise RuntimeError(f"cannot score {response!r}")
            values.append(float("nan") if response == "nan" else float(len(response)))
        rewards = torch.tensor(values, dtype=torch.float32)
        return RewardOutput(rewards=rewards, sub_scores={"length": rewards.clone()})


def test_failures_get_the_failure_reward_and_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reset_failure_log()
    batch = batch_of(["ab", "boom", "abcd", "nan"])
    with caplog.at_level(logging.ERROR, logger="lightrft.reward"):
        first = score_safely(Flaky(), batch, failure_reward=-1.0)
        second = score_safely(Flaky(), batch, failure_reward=-1.0)
    for result in (first, second):
        assert result.output.rewards.tolist() == [2.0, -1.0, 4.0, -1.0]
        assert result.output.sub_scores["length"].tolist() == [2.0, 0.0, 4.0, 0.0]
        assert result.failures == 2
    records = [r for r in caplog.records if r.name == "lightrft.reward"]
    assert len(records) == 2  # one exception type, one non-finite: each logged once
    raised = next(r for r in records if r.exc_info)
    assert "reward 'flaky' raised RuntimeError: cannot score 'boom'" in raised.getMessage()
    assert "returned nan" in next(r for r in records if not r.exc_info).getMessage()


def test_safe_scoring_passes_good_batches_through() -> None:
    result = score_safely(Flaky(), batch_of(["a", "abc"]), failure_reward=0.0)
    assert result.failures == 0
    assert result.output.rewards.tolist() == [1.0, 3.0]
    one = score_safely(Flaky(), batch_of(["boom"]), failure_reward=0.5)
    assert one.failures == 1 and one.output.rewards.tolist() == [0.5]


def test_a_wrong_number_of_rewards_is_a_failure() -> None:
    class Short(Flaky):
        name = "short"

        def score(self, batch: RewardInput) -> RewardOutput:
            return RewardOutput(rewards=torch.zeros(1))

    reset_failure_log()
    result = score_safely(Short(), batch_of(["a", "b", "c"]), failure_reward=-2.0)
    assert result.output.rewards.tolist() == [0.0, 0.0, 0.0]  # one at a time it works
    assert result.failures == 0
    with pytest.raises(ValueError, match="failure_reward must be finite"):
        score_safely(Short(), batch_of(["a"]), failure_reward=float("inf"))
