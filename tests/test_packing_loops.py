"""Sample packing and token-budget micro-batches in the loops (``trainer.packing``,
``trainer.max_tokens_per_micro_batch``): the plan of micro-batches, worked out by hand; and
on a tiny model in fp32, packed rows and any cut of the batch give the padded run's
log-probs, values, losses and gradients (RL with GRPO, the critic, SFT, reward models).
Rows with media: ``test_packing_multimodal.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.actors.packing import (
    PackedSpan,
    pack_padded_rows,
    pack_sequences,
    span_token_index,
    unpack_to_padded,
)
from lightrft_core.config import load_config
from lightrft_core.config.schema import TrainerConfig
from lightrft_core.interfaces import (
    AdvantageOutput,
    Algorithm,
    CriticSpec,
    LossScale,
    PolicyLossOutput,
    ValueLossInput,
    ValueLossOutput,
)
from lightrft_core.plugins import PluginManager, get_plugin_manager
from lightrft_core.strategies.local import LocalStrategy
from lightrft_core.testing.training import LetterPlugin, write_letter_prompts
from lightrft_core.trainer.critic import build_critic
from lightrft_core.trainer.experience import RolloutBatch
from lightrft_core.trainer.micro_batches import plan_micro_batches
from lightrft_core.trainer.rl import RLTrainer
from lightrft_core.trainer.sft import run_sft

LENGTHS = [9, 3, 14, 5, 7, 2]


# ---------------------------------------------------------------------- the plan
def _plan(**options: Any) -> list[list[int]]:
    lengths = torch.tensor(LENGTHS)
    return [g.tolist() for g in plan_micro_batches(lengths, micro_batch_size=4, **options)]


def test_without_a_budget_micro_batches_are_runs_of_rows() -> None:
    assert _plan() == [[0, 1, 2, 3], [4, 5]]


def test_a_packed_budget_balances_tokens_longest_first() -> None:
    # first fit of 14, 9, 7, 5, 3, 2 into 16 tokens needs 3 micro-batches; the balanced
    # spread over 3 (each row to the lightest): 14 | 9+3+2 | 7+5 -> 14, 14, 12 tokens
    assert _plan(max_tokens=16, packing=True) == [[2], [0, 1, 5], [4, 3]]


def test_a_padded_budget_counts_rows_times_the_longest() -> None:
    # 14 | 9 (2 x 9 > 16) | 7 5 (2 x 7) | 3 2 (2 x 3); a row over the budget goes alone
    assert _plan(max_tokens=16) == [[2], [0], [4, 3], [1, 5]]
    assert _plan(max_tokens=6) == [[2], [0], [4], [3], [1, 5]]  # 2 x 3 = 6 fits


def test_ranks_agree_on_the_count_by_splitting_the_costliest() -> None:
    # another rank needs 5: the costliest splittable micro-batch, 7 5 (14 tokens), splits
    assert _plan(max_tokens=16, agree=lambda count: max(count, 5)) == [
        [2], [0], [1, 5], [4], [3],
    ]  # fmt: skip
    with pytest.raises(RuntimeError, match="cannot make 7 micro-batches of 6 rows"):
        _plan(max_tokens=16, agree=lambda count: 7)


def test_packed_rows_unpack_to_the_padded_layout() -> None:
    # rows of 2, 4 and 2 tokens into rows of 4: the longest alone, the two short ones together
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    packed = pack_padded_rows(torch.arange(12).reshape(3, 4), mask)
    assert [(s.row, s.start, s.length) for s in packed.spans] == [(1, 0, 2), (0, 0, 4), (1, 2, 2)]
    assert packed.sequences.tolist() == [[4, 5, 6, 7], [0, 1, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    values = torch.arange(6.0).reshape(2, 3)  # [R, L-1]; column 1 of row 1 crosses sequences
    assert unpack_to_padded(values, packed.spans, 3).tolist() == [
        [3, 0, 0], [0, 1, 2], [5, 0, 0],
    ]  # fmt: skip
    assert pack_padded_rows(torch.arange(12).reshape(3, 4), mask, one_row=True).sequences.shape == (
        1,
        8,
    )


def test_span_token_index_places_every_token_at_once() -> None:
    # spans (row 1, col 0, 2 tokens), (0, 0, 4), (1, 2, 2): their first 1, 3 and 2 tokens
    spans = [PackedSpan(1, 0, 2), PackedSpan(0, 0, 4), PackedSpan(1, 2, 2)]
    rows, cols, offset = span_token_index(spans, [1, 3, 2])
    assert rows.tolist() == [1, 0, 0, 0, 1, 1]
    assert cols.tolist() == [0, 0, 1, 2, 2, 3]
    assert offset.tolist() == [0, 0, 1, 2, 0, 1]
    # pad id and mask of a packed row; gradients flow back through the unpacking
    packed = pack_sequences([torch.tensor([5, 6, 7]), torch.tensor([8])], 3, pad_token_id=9)
    assert packed.sequences.tolist() == [[5, 6, 7], [8, 9, 9]]
    assert packed.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    padded = unpack_to_padded(values, packed.spans, 2)  # a 1-token sequence has no output
    assert padded.tolist() == [[1.0, 2.0], [0.0, 0.0]]
    padded.sum().backward()
    assert values.grad is not None and values.grad.tolist() == [[1.0, 1.0], [0.0, 0.0]]


# ---------------------------------------------------------------------- RL loop
@pytest.fixture(scope="module")
def rl_trainer(fast_tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RLTrainer:
    import lightrft_plugin_grpo.plugin

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(LetterPlugin(), name="letter")
    root = tmp_path_factory.mktemp("packing-rl")
    cfg = load_config(
        None,
        [
            f"run.output_dir={root / 'run'}",
            f"data.train_path={write_letter_prompts(root / 'prompts.jsonl')}",
            "data.apply_chat_template=false",
            f"model.path={fast_tiny_model_dir}",
            "engine.n_samples_per_prompt=4",
            "reward.name=letter",
            "trainer.prompts_per_step=2",
            "logging.tensorboard=false",
        ],
        manager=pm,
    )
    return RLTrainer(cfg, pm)


def _rollout() -> RolloutBatch:
    """8 rows: prompts of 2..5 tokens, responses of 1..21 tokens, right-padded."""
    g = torch.Generator().manual_seed(0)
    prompts = [2 + i % 4 for i in range(8)]
    responses = [1, 21, 4, 13, 2, 9, 17, 6]
    width = max(p + r for p, r in zip(prompts, responses, strict=True))
    sequences = torch.randint(0, 256, (8, width), generator=g)
    attention_mask = torch.zeros(8, width, dtype=torch.long)
    action_mask = torch.zeros(8, width - 1, dtype=torch.bool)
    for row, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        attention_mask[row, : p + r] = 1
        action_mask[row, p - 1 : p - 1 + r] = True
    sequences = sequences * attention_mask
    return RolloutBatch(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=action_mask,
        rewards=torch.rand(8, generator=g),
        engine_log_probs=torch.zeros(8, width - 1),
        group_size=4,
        advantages=torch.randn(8, width - 1, generator=g) * action_mask,
    )


def _train_gradients(
    trainer: RLTrainer, rollout: RolloutBatch, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The accumulated gradient of one optimizer batch (the step is replaced by a copy of
    the gradients) and the train metrics, with ``trainer.*`` ``options``."""
    for key, value in {"packing": False, "max_tokens_per_micro_batch": None, **options}.items():
        monkeypatch.setattr(trainer.cfg.trainer, key, value)
    grads: dict[str, torch.Tensor] = {}

    def capture(model: torch.nn.Module, optimizer: Any, scheduler: Any, **_: Any) -> float:
        grads.update({n: p.grad.clone() for n, p in model.named_parameters()})
        optimizer.zero_grad()
        return 0.0

    monkeypatch.setattr(trainer.c.strategy, "optimizer_step", capture)
    metrics = trainer._train(rollout, 1)
    return grads, metrics


def test_rl_packed_and_token_budget_equal_the_padded_run(
    rl_trainer: RLTrainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout = _rollout()
    padded_old = rl_trainer._log_probs(rl_trainer.actor, rollout)
    monkeypatch.setattr(rl_trainer.cfg.trainer, "packing", True)
    packed_old = rl_trainer._log_probs(rl_trainer.actor, rollout)
    assert padded_old.abs().sum() > 0
    torch.testing.assert_close(packed_old, padded_old, rtol=1e-5, atol=1e-6)
    rollout.old_log_probs = padded_old

    whole, whole_metrics = _train_gradients(rl_trainer, rollout, monkeypatch, micro_batch_size=8)
    cuts = [
        {"micro_batch_size": 8, "packing": True},
        {"micro_batch_size": 3, "packing": True},
        {"max_tokens_per_micro_batch": 30},
        {"max_tokens_per_micro_batch": 30, "packing": True},
    ]
    for options in cuts:
        grads, metrics = _train_gradients(rl_trainer, rollout, monkeypatch, **options)
        for name, grad in whole.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
        for key in ("loss", "entropy"):
            assert metrics[key] == pytest.approx(whole_metrics[key], rel=1e-5), (options, key)


# ---------------------------------------------------------------------- critic
class _ValueRegression(Algorithm):
    """A separate critic; value loss ``Σ 0.5·(V − G)² / num_tokens``."""

    name = "value_regression"

    def needs_critic(self) -> bool:
        return True

    def critic_spec(self) -> CriticSpec:
        return CriticSpec(layout="separate", head_init_std=0.1)

    def compute_advantages(self, batch):  # type: ignore[no-untyped-def]
        return AdvantageOutput(advantages=torch.zeros_like(batch.action_mask, dtype=torch.float))

    def policy_loss(self, batch):  # type: ignore[no-untyped-def]
        return PolicyLossOutput(loss=batch.log_probs.sum())

    def value_loss(self, batch: ValueLossInput) -> ValueLossOutput:
        per_token = 0.5 * (batch.values - batch.returns).square()
        loss = torch.where(batch.action_mask, per_token, 0.0).sum() / batch.scale.num_tokens
        return ValueLossOutput(loss=loss)


def test_packed_critic_values_and_gradients_equal_padded(fast_tiny_model_dir: Path) -> None:
    strategy = LocalStrategy(LocalStrategy.Config(device="cpu"))
    strategy.setup_distributed()
    actor = ActorLanguage(ActorLanguage.Config(path=str(fast_tiny_model_dir)))
    rollout = _rollout()
    rollout.returns = torch.rand(rollout.action_mask.shape) * rollout.action_mask
    scale = LossScale(int(rollout.action_mask.sum()), len(rollout))
    results = []
    # padded, packed, and the value pass cut by a token budget (20: rows of up to 25
    # tokens go alone, the short ones together)
    for options in ({}, {"packing": True}, {"packing": True, "max_tokens_per_micro_batch": 20}):
        torch.manual_seed(0)  # the same value head
        critic = build_critic(
            _ValueRegression(),
            strategy,
            actor,
            trainer=TrainerConfig(**options),
            total_steps=1,
            actor_path=str(fast_tiny_model_dir),
        )
        assert critic is not None
        rollout.values = critic.values(rollout, micro_batch_size=3)
        critic.train_micro_batch(rollout, scale, step=1, sync_gradients=True)
        grads = {n: p.grad.clone() for n, p in critic.trained.named_parameters()}
        results.append((rollout.values, grads))
    (padded, padded_grads), *others = results
    assert padded.abs().sum() > 0
    for packed, packed_grads in others:
        torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
        for name, grad in padded_grads.items():
            torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


# ---------------------------------------------------------------------- SFT
@pytest.mark.installed_plugins
def test_sft_step_is_the_same_packed_and_by_token_budget(
    fast_tiny_model_dir: Path, tmp_path: Path
) -> None:
    """One optimizer step: the same loss and gradient norm (AdamW hides a wrong gradient in
    the weights; the norm does not)."""
    rows = [
        {"prompt": f"say {'a' * (i % 7)}:", "response": "b" * (1 + 3 * i % 17)} for i in range(8)
    ]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manager = get_plugin_manager()

    def first_step(name: str, *extra: str) -> dict[str, float]:
        overrides = [
            f"run.output_dir={tmp_path / name}",
            f"model.path={fast_tiny_model_dir}",
            f"data.train_path={data}",
            "data.apply_chat_template=false",
            "sft.batch_size=8",
            "sft.micro_batch_size=8",
            "sft.max_steps=1",
            "logging.tensorboard=false",
            *extra,
        ]
        return run_sft(load_config(None, overrides, manager=manager), manager).history[-1]

    padded = first_step("padded")
    for name, extra in {
        "packed": ("trainer.packing=true",),
        "budget": ("trainer.packing=true", "trainer.max_tokens_per_micro_batch=40"),
    }.items():
        step = first_step(name, *extra)
        for key in ("sft/loss", "grad_norm"):
            assert step[key] == pytest.approx(padded[key], rel=1e-5), (name, key)


# ---------------------------------------------------------------------- reward models
def test_packed_classifier_scores_equal_the_padded_pooling(fast_tiny_model_dir: Path) -> None:
    """Two heads; row 2 ends with the pad id (the classifier pools before it), row 3 is all
    pad ids (pooled at its first token)."""
    from transformers import AutoModelForSequenceClassification

    from lightrft_core.actors.packing import packed_classifier_scores

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        fast_tiny_model_dir, num_labels=2, attn_implementation="sdpa"
    )
    model.config.pad_token_id = pad = 0
    lengths = [6, 2, 9, 3, 5]
    ids = torch.randint(1, 256, (5, 9)) * (torch.arange(9) < torch.tensor(lengths)[:, None])
    ids[2, 7:] = pad
    ids[3, :3] = pad
    mask = (torch.arange(9) < torch.tensor(lengths)[:, None]).long()
    padded = model(input_ids=ids, attention_mask=mask).logits  # [5, 2]
    padded.square().sum().backward()
    padded_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    packed = packed_classifier_scores(model, model, ids, mask)
    packed.square().sum().backward()
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-7)


@pytest.mark.installed_plugins
def test_rm_step_is_the_same_packed_and_by_token_budget(
    fast_tiny_model_dir: Path, tmp_path: Path
) -> None:
    """One ``lightrft rm`` step with two heads: the same loss, accuracies and gradient
    norm padded, packed, and packed in micro-batches of at most 40 tokens."""
    from lightrft_core.trainer.reward_model import run_reward_model_training

    rows = [
        {
            "prompt": f"say {'a' * (i % 5)}:",
            "chosen": "a" * (1 + 3 * i % 11),
            "rejected": "b" * (1 + 5 * i % 7),
            "better": int(i % 3 == 0),
        }
        for i in range(8)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    heads = [
        {"name": "helpful", "preferred_key": "better"},
        {"name": "other", "lower_is_better": True},
    ]
    manager = get_plugin_manager()

    def first_step(name: str, *extra: str) -> dict[str, float]:
        overrides = [
            f"run.output_dir={tmp_path / name}",
            f"model.path={fast_tiny_model_dir}",
            f"data.train_path={data}",
            "data.apply_chat_template=false",
            f"rm.heads={json.dumps(heads)}",
            "sft.batch_size=8",
            "sft.micro_batch_size=8",
            "sft.max_steps=1",
            "logging.tensorboard=false",
            *extra,
        ]
        cfg = load_config(None, overrides, manager=manager)
        return run_reward_model_training(cfg, manager).history[-1]

    padded = first_step("padded")
    assert padded["grad_norm"] > 0
    for name, extra in {
        "packed": ("trainer.packing=true",),
        "budget": ("trainer.packing=true", "trainer.max_tokens_per_micro_batch=40"),
    }.items():
        step = first_step(name, *extra)
        for key in ("rm/loss", "rm/accuracy/other", "rm/margin/helpful", "grad_norm"):
            assert step[key] == pytest.approx(padded[key], rel=1e-5, abs=1e-7), (name, key)
