"""Audio in every loop on the tiny Qwen2-Audio (``qwen_audio``) and the tiny Qwen2.5-Omni
thinker (``qwen_omni``): a critic loads every trunk weight and hears the clips (separate,
shared and reloaded alike); ``lightrft sft`` trains on audio rows and its export reloads;
``lightrft rm`` trains a scalar reward model on audio preference pairs (the chosen answer
names the tone's pitch) whose export ``reward.name: model`` with ``reward.actor:
qwen_audio`` loads and scores audio prompts with."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lightrft_core.config import load_config
from lightrft_core.interfaces import Actor, RewardInput
from lightrft_core.interfaces.multimodal import MultiModalInputs
from lightrft_core.models.critic import CriticModel, TrunkOptions, ValueHead
from lightrft_core.plugins import get_plugin_manager
from lightrft_core.rewards.model import ScalarRewardModel
from lightrft_core.rewards.trunk_scoring import encode_with_media, trunk_scores
from lightrft_core.trainer.sft import run_sft
from lightrft_plugin_qwen_audio.actor import QwenAudioActor
from lightrft_plugin_qwen_audio.omni import QwenOmniActor
from lightrft_plugin_qwen_audio.testing import tone

pytestmark = pytest.mark.installed_plugins

RATE = 16_000
PITCHES = {"low": 220.0, "high": 1760.0}
EAGER = TrunkOptions(attn_implementation="eager")


def chat(processor: Any, question: str, clips: int = 1) -> str:
    """A user turn with ``clips`` audio placeholders and ``question``, the generation prompt
    after it."""
    content = [{"type": "audio"}] * clips + [{"type": "text", "text": question}]
    return processor.apply_chat_template(  # type: ignore[no-any-return]
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


# ---------------------------------------------------------------- critic
ACTORS: dict[str, tuple[type[Actor], str]] = {
    "qwen_audio": (QwenAudioActor, "tiny_qwen_audio_dir"),
    "qwen_omni": (QwenOmniActor, "tiny_qwen_omni_dir"),
}


@pytest.mark.parametrize("name", list(ACTORS))
def test_a_critic_loads_every_trunk_weight_and_hears_the_clips(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    actor_class, fixture = ACTORS[name]
    folder = request.getfixturevalue(fixture)
    critic = CriticModel.from_pretrained(
        folder, EAGER, init_std=0.1, actor_class=actor_class
    ).eval()
    policy = actor_class(actor_class.Config(path=str(folder), attn_implementation="eager"))
    # every weight of the policy's trunk, none missing, none random: the head is the only
    # new part
    expected = policy.trunk().state_dict()
    loaded = critic.state_dict()
    assert set(loaded) == {f"trunk.{k}" for k in expected} | {
        "value_head.linear.weight",
        "value_head.linear.bias",
    }
    for key, value in expected.items():
        assert torch.equal(loaded[f"trunk.{key}"], value), key

    processor = actor_class.load_processor(str(folder))
    text = chat(processor, "pitch?") + "low"
    clips = [[tone(1.0, PITCHES["low"])], [tone(1.0, PITCHES["high"])]]
    batch = encode_with_media(processor, actor_class, [text, text], [[], []], clips)

    def values(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(
                batch.input_ids,
                batch.attention_mask,
                trunk_inputs=lambda trunk: actor_class.trunk_inputs(
                    trunk, batch.input_ids, batch.attention_mask, **batch.media
                ),
            )

    separate = values(critic)
    assert torch.equal(batch.input_ids[0], batch.input_ids[1])  # the same text
    assert not torch.allclose(separate[0], separate[1], atol=1e-4)  # another clip
    # a shared critic (the policy's own trunk) with the same head reads the same states
    shared = CriticModel(policy.trunk(), critic.value_head, actor_class=actor_class).eval()
    assert torch.allclose(values(shared), separate, atol=1e-5)
    critic.save_pretrained(tmp_path / "critic")
    reloaded = CriticModel.from_pretrained(tmp_path / "critic", EAGER, actor_class=actor_class)
    assert torch.allclose(values(reloaded.eval()), separate, atol=1e-6)
    # a scalar reward model's reading of the folder (the score at the last token) hears too
    with torch.no_grad():
        last = trunk_scores(reloaded, actor_class, batch)
    assert last.shape == (2,) and not torch.allclose(last[0], last[1], atol=1e-4)


# ---------------------------------------------------------------- SFT and RM data
def write_wav(path: Path, clip: np.ndarray) -> str:
    """``clip`` as a 16-bit mono wav file; its name."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((clip * 32767).astype("<i2").tobytes())
    return path.name


def pitch_clip(folder: Path, index: int, pitch: str) -> str:
    """A 0.5 s tone of ``pitch`` (a little off-key, so no two files are the same)."""
    hz = PITCHES[pitch] * (1.0 + 0.01 * (index % 5))
    return write_wav(folder / f"{pitch}{index}.wav", tone(0.5, hz))


def pitch_pairs(folder: Path, count: int) -> Path:
    """``count`` pairs about one tone, low and high in turn: chosen names its pitch, rejected
    the other; each word is chosen as often as rejected, so only the clip tells them apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        heard, other = ("high", "low") if i % 2 else ("low", "high")
        audios = [pitch_clip(folder, i, heard)]
        rows.append({"prompt": "pitch?", "audios": audios, "chosen": heard, "rejected": other})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_sft_trains_on_audio_rows_and_its_export_reloads(
    tiny_qwen_audio_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {"prompt": "pitch?", "response": pitch, "audios": [pitch_clip(data, i, pitch)]}
        for i, pitch in enumerate(["low", "high", "high", "low"])
    ]
    rows.insert(1, {"prompt": "hi", "response": "hello"})  # a text row among them
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    manager = get_plugin_manager()
    overrides = [
        f"run.output_dir={tmp_path / 'sft'}",
        "run.seed=0",
        "model.name=qwen_audio",
        f"model.path={tiny_qwen_audio_dir}",
        f"data.train_path={data / 'train.jsonl'}",
        "sft.batch_size=4",
        "sft.micro_batch_size=2",
        "sft.max_steps=2",
        "sft.learning_rate=1e-3",
        "logging.tensorboard=false",
    ]
    result = run_sft(load_config(None, overrides, manager=manager), manager)
    losses = [r["sft/loss"] for r in result.history if "sft/loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert all(r["grad_norm"] > 0 for r in result.history if "grad_norm" in r)

    config = QwenAudioActor.Config
    before = QwenAudioActor(config(path=str(tiny_qwen_audio_dir), attn_implementation="eager"))
    after = QwenAudioActor(config(path=str(result.final_model), attn_implementation="eager"))
    trained = dict(after.base_model.named_parameters())
    changed = [
        name
        for name, weight in before.base_model.named_parameters()
        if not torch.equal(weight, trained[name])
    ]
    assert any(".language_model." in n for n in changed)  # the decoder trained
    assert any(".audio_tower." in n for n in changed)  # and the encoder (not frozen)
    processor = QwenAudioActor.load_processor(str(result.final_model))
    text = chat(processor, "pitch?") + "low"
    batch = encode_with_media(
        processor, QwenAudioActor, [text], [[]], [[tone(0.5, PITCHES["low"])]]
    )
    with torch.no_grad():
        out = after(batch.input_ids, batch.attention_mask, **batch.media)
    assert torch.isfinite(out.log_probs).all() and (out.log_probs < 0).any()


@pytest.mark.slow
def test_a_reward_model_learns_to_hear_the_pitch(tiny_qwen_audio_dir: Path, tmp_path: Path) -> None:
    from lightrft_cli.main import app

    held_out = pitch_pairs(tmp_path / "eval", 16)
    args = [
        "rm",
        f"run.output_dir={tmp_path / 'rm'}",
        "run.seed=0",
        "model.name=qwen_audio",
        f"model.path={tiny_qwen_audio_dir}",
        f"data.train_path={pitch_pairs(tmp_path / 'train', 16)}",
        f"data.eval_path={held_out}",
        "sft.batch_size=8",
        "sft.micro_batch_size=8",
        "sft.epochs=4",
        "sft.learning_rate=2e-3",
        "logging.tensorboard=false",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "reward.name=model reward.actor=qwen_audio" in " ".join(result.output.split())
    lines = (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    evals = [r["eval/accuracy"] for r in history if "eval/accuracy" in r]
    assert evals[0] == 0.0  # a zero score head: every margin is 0
    assert evals[-1] > 0.8  # 16 held-out pairs (other tones), chance is 0.5
    losses = [r["rm/loss"] for r in history if "rm/loss" in r]
    assert losses[0] == pytest.approx(float(np.log(2.0)), rel=1e-5)
    assert sum(losses[-2:]) / 2 < 0.85 * losses[0]

    final = tmp_path / "rm" / "final"
    reward = ScalarRewardModel(ScalarRewardModel.Config(path=str(final), actor="qwen_audio"))
    assert reward.accepts_image_prompts  # it reads the prompts' media
    assert isinstance(reward.model.value_head, ValueHead)
    prompt = chat(reward.processor, "pitch?")
    clips = {pitch: MultiModalInputs([], {}, [tone(0.5, hz)]) for pitch, hz in PITCHES.items()}
    names = list(PITCHES)
    batch = RewardInput(
        prompts=[prompt] * 4,
        responses=[answer for _ in names for answer in names],
        multimodal=[clips[heard] for heard in names for _ in names],
    )
    scores = reward.score(batch).rewards.reshape(2, 2)  # [clip, answer]
    # the same texts score differently with another clip: each clip's best answer names it
    assert scores.argmax(dim=1).tolist() == [0, 1]
