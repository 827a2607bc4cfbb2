"""Run on 2 ranks (``torchrun ... ulysses_worker.py OUT``, gloo on the CPU) by
``test_ulysses_distributed.py``: Ulysses sequence parallelism over both ranks against the
unsplit model, for Llama (eager kernel) and Qwen2 (sdpa), and under the fsdp strategy
(``sequence_parallel_size=2``: data-parallel size 1). Rank 0 writes ``OUT/result.json``:
for each case the largest difference of log-probs and of gradients. Then the RL loop
(``RLTrainer``) with the overrides of ``OUT/rl.json`` under fsdp with both ranks splitting
every sequence, then PPO with ``OUT/ppo.json`` (its critic split too); the test compares
their run folders with one-rank runs'. Then the SFT loop
(``run_sft``) with each list of overrides in ``OUT/sft.json``, split the same way, and last
the reward-model loop (``lightrft rm``) with ``OUT/rm.json``. Sequence classifiers (Llama
eager, Qwen2 sdpa) split over both ranks are compared with the unsplit ones too."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lightrft_core.actors.language import ActorLanguage
from lightrft_plugin_patches.sequence_parallel import (
    enable_sequence_parallel,
    sequence_parallel_forward,
)

ROWS, LENGTH, VOCAB = 3, 11, 64  # 11 positions: the slices are padded to 2 x 6


def tiny_model(family: str, attention: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[family]
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return model_cls(config)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences, their mask (row 1 left-padded, row 2 right-padded) and loss weights."""
    g = torch.Generator().manual_seed(1)
    sequences = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=g)
    mask = torch.ones(ROWS, LENGTH, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, -4:] = 0
    weights = torch.randn(ROWS, LENGTH - 1, generator=g)
    return sequences, mask, weights


def unsplit(model: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Log-probs and gradients of ``sum(weights * log_probs)`` without sequence parallelism."""
    sequences, mask, weights = batch()
    log_probs = ActorLanguage.from_model(model)(sequences, mask).log_probs
    (weights * log_probs).sum().backward()
    return log_probs.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def largest(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def plain_case(family: str, attention: str) -> dict[str, float]:
    """Both ranks split every sequence; gradients summed over the group."""
    model = tiny_model(family, attention)
    split = copy.deepcopy(model)
    expected, expected_grads = unsplit(model)
    sequences, mask, weights = batch()
    actor = ActorLanguage.from_model(split)
    enable_sequence_parallel(actor, dist.group.WORLD)
    out = actor(sequences, mask)
    (weights * out.log_probs).sum().backward()
    grads = {}
    for name, param in split.named_parameters():
        dist.all_reduce(param.grad)
        grads[name] = param.grad
    return {
        "log_probs": float((out.log_probs - expected).abs().max()),
        "gradients": largest(grads, expected_grads),
    }


def packed_case(family: str, attention: str) -> dict[str, float]:
    """Packed rows (sequences of 6, 4, 3, 3 and 1 tokens) split over both ranks against the
    unsplit packed forward, and unpacked against the padded one. Eager: rows 6 wide
    ([6], [4, 1], [3, 3]), slices of 3 cutting the 4-token sequence; sdpa: one row of 17
    (slices of 9, one padding column), the 4-token sequence cut at column 9."""
    from lightrft_core.actors.packing import pack_padded_rows, unpack_to_padded

    model = tiny_model(family, attention)
    split = copy.deepcopy(model)
    lengths = torch.tensor([6, 4, 3, 3, 1])
    g = torch.Generator().manual_seed(2)
    padded = torch.randint(0, VOCAB, (len(lengths), 6), generator=g)
    padded_mask = (torch.arange(6) < lengths[:, None]).long()
    packed = pack_padded_rows(padded, padded_mask, one_row=attention == "sdpa")
    inputs = (packed.sequences, packed.attention_mask)
    weights = torch.randn(packed.sequences.shape[0], packed.sequences.shape[1] - 1, generator=g)
    unsplit = ActorLanguage.from_model(model)
    expected = unsplit(*inputs, position_ids=packed.position_ids).log_probs
    (weights * expected).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    whole = ActorLanguage.from_model(copy.deepcopy(model))(padded, padded_mask).log_probs
    actor = ActorLanguage.from_model(split)
    enable_sequence_parallel(actor, dist.group.WORLD)
    log_probs = actor(*inputs, position_ids=packed.position_ids).log_probs
    (weights * log_probs).sum().backward()
    grads = {}
    for name, param in split.named_parameters():
        dist.all_reduce(param.grad)
        grads[name] = param.grad
    return {
        "log_probs": float((log_probs - expected).abs().max()),
        "gradients": largest(grads, expected_grads),
        "padded": float((unpack_to_padded(log_probs, packed.spans, 5) - whole).abs().max()),
        "scored": int((log_probs != 0).sum()),
    }


def tiny_classifier(family: str, attention: str) -> Any:
    """The two-head sequence classifier of ``tiny_model``'s decoder, padding token 0."""
    from transformers import AutoModelForSequenceClassification

    config = tiny_model(family, attention).config
    config.num_labels, config.pad_token_id = 2, 0
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)


def classifier_case(family: str, attention: str) -> dict[str, float]:
    """Scores of right-padded rows (last tokens at positions 10, 7 and 4: in either slice)
    and the gradients of ``sum(weights * scores)`` summed over the group, against the
    unsplit classifier."""
    from lightrft_plugin_patches.split_scores import enable_split_scores

    model = tiny_classifier(family, attention)
    split = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, VOCAB, (ROWS, LENGTH), generator=g)
    mask = (torch.arange(LENGTH) < torch.tensor([[11], [8], [5]])).long()
    tokens = tokens * mask  # padding is token 0
    weights = torch.randn(ROWS, 2, generator=g)
    expected = model(input_ids=tokens, attention_mask=mask).logits  # [B, 2]
    (weights * expected).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    enable_split_scores(split, dist.group.WORLD)
    scores = split(input_ids=tokens, attention_mask=mask).logits
    (weights * scores).sum().backward()
    scores, expected = scores.detach(), expected.detach()
    grads = {}
    for name, param in split.named_parameters():
        dist.all_reduce(param.grad)
        grads[name] = param.grad
    return {
        "scores": float((scores - expected).abs().max()),
        "gradients": largest(grads, expected_grads),
    }


def critic_case(family: str, attention: str, packed: bool) -> dict[str, float]:
    """A critic on ``tiny_model``'s trunk: values of ``batch()``'s rows (left- and
    right-padded), or of the same sequences packed (``packed_model_inputs``: one row for
    sdpa, a block-diagonal mask for eager), and the gradients of ``sum(weights * values)``
    summed over the group, against the unsplit critic."""
    from lightrft_core.actors.packing import pack_padded_rows, packed_model_inputs
    from lightrft_core.models.critic import CriticModel, ValueHead
    from lightrft_plugin_patches.split_values import enable_split_values

    torch.manual_seed(0)
    model = CriticModel(tiny_model(family, attention).model, ValueHead(32, init_std=0.1))
    split = copy.deepcopy(model)
    sequences, mask, _ = batch()
    trunk_inputs = None
    if packed:
        rows = pack_padded_rows(sequences, mask, one_row=attention == "sdpa")
        sequences, mask = rows.sequences, rows.attention_mask

        def trunk_inputs(trunk: Any) -> dict[str, Any]:
            return packed_model_inputs(attention, rows, trunk.dtype)

    weights = torch.randn(sequences.shape[0], sequences.shape[1] - 1)
    expected = model(sequences, mask, trunk_inputs=trunk_inputs)
    (weights * expected).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    enable_split_values(split, dist.group.WORLD)
    values = split(sequences, mask, trunk_inputs=trunk_inputs)
    (weights * values).sum().backward()
    grads = {}
    for name, param in split.named_parameters():
        dist.all_reduce(param.grad)
        grads[name] = param.grad
    return {
        "values": float((values - expected).detach().abs().max()),
        "gradients": largest(grads, expected_grads),
    }


def fsdp_case() -> dict[str, float]:
    """Under fsdp (parameters sharded over both ranks, gradients averaged over them) the
    loss carries ``world_size`` as ``LossScale`` does."""
    from lightrft_plugin_fsdp.strategy import FSDPStrategy

    strategy = FSDPStrategy(FSDPStrategy.Config(sequence_parallel_size=2, backend="gloo"))
    strategy.setup_distributed()
    model = tiny_model("qwen2", "sdpa")
    expected, expected_grads = unsplit(copy.deepcopy(model))
    actor = ActorLanguage.from_model(model)
    optimizer = torch.optim.SGD(actor.parameters(), lr=0.0)
    strategy.prepare(actor, optimizer)
    sequences, mask, weights = batch()  # prepare made the forward split the sequences
    out = actor(sequences, mask)
    strategy.backward((weights * out.log_probs).sum() * strategy.world_size, actor)
    grads = {
        name.removeprefix("model."): param.grad.full_tensor()
        for name, param in actor.named_parameters()
    }
    return {
        "log_probs": float((out.log_probs - expected).abs().max()),
        "gradients": largest(grads, expected_grads),
        "data_parallel_size": strategy.data_parallel_size,
    }


def rl_run(overrides: list[str]) -> dict[str, bool]:
    """``lightrft train``'s loop (GRPO or PPO, the letter reward) with both ranks splitting
    every sequence: data-parallel size 1. Returns whether the actor, the reference and the
    critic forwards (those the run has) were the split ones."""
    import lightrft_plugin_fsdp.plugin
    import lightrft_plugin_grpo.plugin
    import lightrft_plugin_ppo.plugin
    from lightrft_core.config import load_config
    from lightrft_core.plugins import PluginManager
    from lightrft_core.testing.training import LetterPlugin
    from lightrft_core.trainer.rl import RLTrainer
    from lightrft_plugin_patches.split_values import sequence_parallel_values

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    pm.register(lightrft_plugin_ppo.plugin, name="ppo")
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    pm.register(LetterPlugin(), name="letter")
    split = ["strategy.name=fsdp", "strategy.backend=gloo", "strategy.sequence_parallel_size=2"]
    trainer = RLTrainer(load_config(None, [*overrides, *split], manager=pm), pm)
    trainer.train()

    def splits(model: Any, forward: Any = sequence_parallel_forward) -> bool:
        return vars(model)["forward"].func is forward

    split = {"actor": splits(trainer.actor)}
    if trainer.reference is not None:
        split["reference"] = splits(trainer.reference)
    if trainer.critic is not None:
        split["critic"] = splits(trainer.critic.trained, sequence_parallel_values)
    return split


def sft_run(overrides: list[str]) -> None:
    """``lightrft sft``'s loop with both ranks splitting every sequence (data-parallel size
    1: were they not split, the gradient summed over both ranks would be twice the
    one-rank run's, and so would the logged grad_norm)."""
    import lightrft_plugin_fsdp.plugin
    import lightrft_plugin_grpo.plugin
    from lightrft_core.config import load_config
    from lightrft_core.plugins import PluginManager
    from lightrft_core.trainer.sft import run_sft

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")  # the config's default algorithm
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    split = ["strategy.name=fsdp", "strategy.backend=gloo", "strategy.sequence_parallel_size=2"]
    run_sft(load_config(None, [*overrides, *split], manager=pm), pm)


def rm_run(overrides: list[str]) -> None:
    """``lightrft rm``'s loop with both ranks splitting every row (data-parallel size 1:
    were they not split, the loss scale of 2 would double the one-rank run's gradient)."""
    import lightrft_plugin_fsdp.plugin
    import lightrft_plugin_grpo.plugin
    from lightrft_core.config import load_config
    from lightrft_core.plugins import PluginManager
    from lightrft_core.trainer.reward_model import run_reward_model_training

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")  # the config's default algorithm
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    split = ["strategy.name=fsdp", "strategy.backend=gloo", "strategy.sequence_parallel_size=2"]
    run_reward_model_training(load_config(None, [*overrides, *split], manager=pm), pm)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    results = {
        f"{family}-{attention}": plain_case(family, attention)
        for family, attention in (("llama", "eager"), ("qwen2", "sdpa"))
    }
    for family, attention in (("llama", "eager"), ("qwen2", "sdpa")):
        results[f"packed-{family}-{attention}"] = packed_case(family, attention)
    for family, attention in (("llama", "eager"), ("qwen2", "sdpa")):
        results[f"classifier-{family}-{attention}"] = classifier_case(family, attention)
        for packed in (False, True):
            name = f"critic-{family}-{attention}" + ("-packed" if packed else "")
            results[name] = critic_case(family, attention, packed)
    results["fsdp"] = fsdp_case()
    split = rl_run(json.loads((out / "rl.json").read_text(encoding="utf-8")))
    ppo_split = rl_run(json.loads((out / "ppo.json").read_text(encoding="utf-8")))
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        (out / "rl_result.json").write_text(json.dumps(split), encoding="utf-8")
        (out / "ppo_result.json").write_text(json.dumps(ppo_split), encoding="utf-8")
    for overrides in json.loads((out / "sft.json").read_text(encoding="utf-8")):
        sft_run(overrides)
    rm_run(json.loads((out / "rm.json").read_text(encoding="utf-8")))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
