"""``reward.name: model``: a scalar reward model (a tiny Qwen2 sequence classifier built here)
scores ``prompt + response``; the scores match a hand computation, do not depend on batching
or padding, truncation keeps the response; and RLHF end to end: a reward model trained here
with the Bradley–Terry loss to prefer responses full of 'a' drives a GRPO run whose reward
rises."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.interfaces import RewardInput
from lightrft_core.models.tiny import build_byte_tokenizer
from lightrft_core.rewards.model import ScalarRewardModel
from lightrft_core.testing import RewardConformance


def classifier(num_labels: int = 1, seed: int = 0) -> Any:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = build_byte_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=256,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(config), tokenizer


def save(model: Any, tokenizer: Any, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    model, tokenizer = classifier()
    return save(model, tokenizer, tmp_path_factory.mktemp("rm"))


def reward(path: Path, **options: Any) -> ScalarRewardModel:
    return ScalarRewardModel(ScalarRewardModel.Config(path=str(path), **options))


TEXTS = [
    ("Q: 1+1=", "2"),
    ("say a:", "aaaa"),
    ("x", "a much longer response, with words"),
    ("", "z"),
]


def batch(pairs: list[tuple[str, str]] = TEXTS) -> RewardInput:
    return RewardInput(prompts=[p for p, _ in pairs], responses=[r for _, r in pairs])


def hand_score(path: Path, text: str) -> float:
    """The score head applied to the last token's final hidden state, without padding."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    ids = torch.tensor([build_byte_tokenizer().encode(text)])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, -1]  # [H]
        return float(hidden @ model.score.weight[0])


def test_the_reward_is_the_score_of_prompt_plus_response(rm_dir) -> None:
    out = reward(rm_dir, scale=2.0, shift=-1.0).score(batch())
    expected = torch.tensor([hand_score(rm_dir, p + r) for p, r in TEXTS])
    torch.testing.assert_close(out.sub_scores["model_score"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.rewards, 2.0 * expected - 1.0, atol=1e-5, rtol=0)


def test_scores_do_not_depend_on_batching_or_padding(rm_dir) -> None:
    alone = reward(rm_dir, batch_size=1).score(batch()).rewards
    together = reward(rm_dir, batch_size=4).score(batch()).rewards  # padded to the longest
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert len(set(alone.tolist())) == len(TEXTS)  # the texts really score differently


def test_truncation_keeps_the_end_of_the_text(rm_dir) -> None:
    prompt, response = "a long prompt that will be cut: ", "the response"
    out = reward(rm_dir, max_length=16).score(batch([(prompt, response)]))
    tail = (prompt + response).encode()[-16:].decode()  # bytes = tokens here
    assert out.rewards.item() == pytest.approx(hand_score(rm_dir, tail), abs=1e-5)


def test_bad_setups_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs reward.path"):
        ScalarRewardModel()
    two = save(*classifier(num_labels=2), tmp_path / "two")
    with pytest.raises(ValueError, match="has 2 heads .* set reward.head"):
        reward(two)  # several outputs: which one is the reward must be said
    with pytest.raises(ValueError, match="batch_size"):
        ScalarRewardModel.Config(path="x", batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        ScalarRewardModel.Config(path="x", max_length=1)


class TestScalarRewardModelConformance(RewardConformance):
    reward_cls = ScalarRewardModel

    @pytest.fixture(autouse=True)
    def _path(self, rm_dir) -> None:
        self.path = rm_dir

    def make_reward(self) -> ScalarRewardModel:
        return reward(self.path)


# ---------------------------------------------------------------------- RLHF end to end
def train_letter_rm(path: Path) -> float:
    """A reward model trained with the Bradley–Terry loss, -log σ(s_chosen - s_rejected),
    on pairs whose chosen response is mostly 'a' and whose rejected one has none; saved to
    ``path``. Returns its accuracy on fresh pairs."""
    model, tokenizer = classifier(seed=1)
    rng = random.Random(0)
    letters = "bcdefghijklmnopqrstuvwxyz0123456789 "

    def pair() -> tuple[str, str]:
        prompt = f"say a{rng.randrange(100)}:"
        length = rng.randint(1, 6)
        chosen = "".join(rng.choice("aaab") for _ in range(length))
        rejected = "".join(rng.choice(letters) for _ in range(rng.randint(1, 6)))
        return prompt + chosen, prompt + rejected

    def scores(texts: list[str]) -> torch.Tensor:
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        return model(**encoded).logits[:, 0]

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        pairs = [pair() for _ in range(16)]
        margin = scores([c for c, _ in pairs]) - scores([r for _, r in pairs])
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        pairs = [pair() for _ in range(64)]
        margin = scores([c for c, _ in pairs]) - scores([r for _, r in pairs])
    save(model, tokenizer, path)
    return float((margin > 0).float().mean())


def test_rlhf_with_a_trained_reward_model(tiny_model_dir, tmp_path) -> None:
    import lightrft_plugin_grpo.plugin
    from lightrft_core.config import load_config
    from lightrft_core.plugins import PluginManager
    from lightrft_core.trainer.rl import RLTrainer

    assert train_letter_rm(tmp_path / "rm") > 0.9
    rows = [{"prompt": f"say a{i}:"} for i in range(32)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path / 'run'}",
            "run.seed=3",
            f"data.train_path={prompts}",
            "data.apply_chat_template=false",
            f"model.path={tiny_model_dir}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=6",
            "reward.name=model",
            f"reward.path={tmp_path / 'rm'}",
            "trainer.max_steps=25",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=8",
            "trainer.learning_rate=3e-3",
            "trainer.max_grad_norm=1.0",
            "logging.tensorboard=false",
        ],
        manager=pm,
    )
    trainer = RLTrainer(cfg, pm)
    history = trainer.train().history
    rewards = [r["reward/mean"] for r in history]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.5, rewards
    # what the reward model stands for: the policy now says 'a' far more often
    from lightrft_core.interfaces import SamplingParams

    prompt_ids = [trainer.c.tokenizer.encode(r["prompt"]) for r in rows[:8]]
    outputs = trainer.c.engine.generate(prompt_ids, SamplingParams(n=4, max_new_tokens=6, seed=0))
    texts = [trainer.c.tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outputs]
    share = sum(t.count("a") for t in texts) / max(1, sum(len(t) for t in texts))
    assert share > 0.5, texts
