"""The ``hf`` engine: sampling settings, behaviour log-probs, batching and weight sync."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightrft_core.engines import HFEngine, hf
from lightrft_core.engines.hf import prompt_runs
from lightrft_core.engines.kv_cache import PreallocatedLayer
from lightrft_core.engines.sampling import exponential_noise, filter_logits, sample_next
from lightrft_core.interfaces import InferenceEngine, SamplingParams
from lightrft_core.models.tiny import build_byte_tokenizer, build_tiny_model
from lightrft_core.testing import EngineConformance

TOKENIZER = build_byte_tokenizer()
PROMPTS = [[72, 101, 108, 108, 111], [87, 111], [40, 41, 42, 43, 44, 45, 46, 47]]


def tiny_model(seed: int = 0) -> Any:
    """A 2-layer Qwen2 over the byte tokenizer's vocabulary (fp32)."""
    return build_tiny_model(
        "5m",
        vocab_size=len(TOKENIZER),
        seed=seed,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def shared_engine(model: Any, **config: Any) -> HFEngine:
    engine = HFEngine(HFEngine.Config(**config))
    engine.setup(model=model, tokenizer=TOKENIZER)
    return engine


def recompute(model: Any, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Log-probs of ``response`` after ``prompt``: one unpadded full-sequence forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()  # [T, V]
    log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # [R, V]
    return log_probs.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def assert_log_probs_match(model: Any, prompts: list[list[int]], outputs: list[Any]) -> None:
    for out in outputs:
        expected = recompute(model, prompts[out.prompt_index], out.token_ids)
        assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4), out


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_model().eval()


class TestHFEngineConformance(EngineConformance):
    engine_cls = HFEngine

    def make_engine(self) -> InferenceEngine:
        return shared_engine(tiny_model())

    def make_weights(self, engine: InferenceEngine) -> list[tuple[str, torch.Tensor]] | None:
        return list(engine.model.state_dict().items())  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- sampling
def test_log_probs_equal_a_full_forward_recompute(model: Any) -> None:
    engine = shared_engine(model)
    params = SamplingParams(n=2, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=8, seed=3)
    outputs = engine.generate(PROMPTS, params)
    assert [o.prompt_index for o in outputs] == [0, 0, 1, 1, 2, 2]
    assert_log_probs_match(model, PROMPTS, outputs)


def test_log_probs_are_raw_whatever_the_sampling_settings(model: Any) -> None:
    engine = shared_engine(model)
    params = SamplingParams(n=2, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=6, seed=1)
    assert_log_probs_match(model, PROMPTS, engine.generate(PROMPTS, params))


def test_greedy_equals_top_k_1_and_tiny_top_p(model: Any) -> None:
    engine = shared_engine(model)
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    top_k = engine.generate(PROMPTS, SamplingParams(top_k=1, max_new_tokens=8, seed=5))
    top_p = engine.generate(PROMPTS, SamplingParams(top_p=1e-6, max_new_tokens=8, seed=6))
    assert [o.token_ids for o in greedy] == [o.token_ids for o in top_k]
    assert [o.token_ids for o in greedy] == [o.token_ids for o in top_p]
    for out in greedy:  # each greedy token is the argmax of the recomputed distribution
        prompt = PROMPTS[out.prompt_index]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out.token_ids])).logits[0]
        assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == out.token_ids


def test_top_k_and_top_p_keep_samples_inside_the_allowed_set(model: Any) -> None:
    engine = shared_engine(model)
    prompt = PROMPTS[0]
    with torch.no_grad():
        first = model(torch.tensor([prompt])).logits[0, -1]
    allowed = set(first.topk(3).indices.tolist())
    params = SamplingParams(n=32, top_k=3, max_new_tokens=1, seed=0)
    firsts = {o.token_ids[0] for o in engine.generate([prompt], params)}
    assert firsts <= allowed and len(firsts) > 1


def test_max_new_tokens_is_respected(model: Any) -> None:
    engine = shared_engine(model)
    engine.eos_token_ids = []  # no EOS: every row runs to the limit
    outputs = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=5, seed=0))
    assert all(len(o.token_ids) == 5 and o.finish_reason == "length" for o in outputs)


def test_stop_token_ends_the_response_and_is_kept(model: Any) -> None:
    engine = shared_engine(model)
    engine.eos_token_ids = []
    greedy = engine.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=8))[0]
    stop = greedy.token_ids[2]
    cut = greedy.token_ids.index(stop) + 1
    params = SamplingParams(temperature=0, max_new_tokens=8, stop_token_ids=[stop])
    out = engine.generate(PROMPTS[:1], params)[0]
    assert out.token_ids == greedy.token_ids[:cut]
    assert out.log_probs == pytest.approx(greedy.log_probs[:cut], abs=1e-6)
    assert out.finish_reason == "stop"


def test_eos_and_pad_come_from_the_tokenizer_or_the_generation_config() -> None:
    engine = shared_engine(tiny_model())
    assert engine.eos_token_ids == [TOKENIZER.eos_token_id]
    assert engine.pad_token_id == TOKENIZER.pad_token_id
    model = tiny_model()
    model.generation_config.eos_token_id = [7, 9]
    engine = HFEngine()
    engine.setup(model=model)
    assert engine.eos_token_ids == [7, 9] and engine.pad_token_id == 7


def test_every_eos_id_stops(model: Any) -> None:
    engine = shared_engine(model)
    greedy = engine.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=3))[0]
    engine.eos_token_ids = [TOKENIZER.eos_token_id, greedy.token_ids[0]]
    out = engine.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=3))[0]
    assert out.token_ids == greedy.token_ids[:1] and out.finish_reason == "stop"


def test_n_samples_per_prompt_are_contiguous_and_differ(model: Any) -> None:
    engine = shared_engine(model)
    outputs = engine.generate(PROMPTS[:2], SamplingParams(n=4, max_new_tokens=8, seed=0))
    assert [o.prompt_index for o in outputs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({tuple(o.token_ids) for o in outputs[:4]}) > 1


def test_seed_makes_sampling_reproducible(model: Any) -> None:
    engine = shared_engine(model)

    def run(seed: int) -> list[list[int]]:
        params = SamplingParams(n=2, max_new_tokens=8, seed=seed)
        return [o.token_ids for o in engine.generate(PROMPTS, params)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_fire_samples_only_the_first_token_at_its_temperature(model: Any) -> None:
    engine = shared_engine(model)
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=1))
    params = SamplingParams(n=4, max_new_tokens=6, seed=0, first_token_temperature=0.0)
    outputs = engine.generate(PROMPTS, params)
    for out in outputs:
        assert out.token_ids[0] == greedy[out.prompt_index].token_ids[0]
    assert len({tuple(o.token_ids) for o in outputs}) > len(PROMPTS)  # later tokens sampled
    assert_log_probs_match(model, PROMPTS, outputs)


def test_left_padding_and_batch_size_do_not_change_greedy_outputs(model: Any) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=8)
    alone = shared_engine(model).generate([PROMPTS[1]], params)[0]
    batched = shared_engine(model).generate(PROMPTS, params)
    small_batches = shared_engine(model, max_batch_size=1).generate(PROMPTS, params)
    assert batched[1].token_ids == alone.token_ids
    assert batched[1].log_probs == pytest.approx(alone.log_probs, abs=1e-4)
    assert [o.token_ids for o in small_batches] == [o.token_ids for o in batched]


def test_left_padded_rows_get_positions_from_their_first_token(model: Any) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append((kwargs["position_ids"].clone(), kwargs["attention_mask"].clone()))

    hook = model.register_forward_pre_hook(spy, with_kwargs=True)
    engine = shared_engine(model)
    engine.eos_token_ids = []
    engine.generate(PROMPTS[:2], SamplingParams(temperature=0, max_new_tokens=3))
    hook.remove()
    (prefill_pos, prefill_mask), *decode = seen
    assert prefill_pos.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 1]]
    assert prefill_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert [p.tolist() for p, _ in decode] == [[[5], [2]], [[6], [3]]]
    assert [m.shape[1] for _, m in decode] == [6, 7]


def test_return_log_probs_false_gives_empty_lists(model: Any) -> None:
    params = SamplingParams(max_new_tokens=3, seed=0, return_log_probs=False)
    assert all(o.log_probs == [] for o in shared_engine(model).generate(PROMPTS, params))


def test_bad_prompts_and_config_are_refused(model: Any) -> None:
    engine = shared_engine(model)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[10_000]], SamplingParams())
    with pytest.raises(ValueError, match="max_batch_size"):
        HFEngine.Config(max_batch_size=0)
    with pytest.raises(RuntimeError, match="setup"):
        HFEngine().generate([[1]], SamplingParams())


# ---------------------------------------------------------------------- shared training model
def test_train_mode_and_gradient_checkpointing_survive_generation() -> None:
    model = tiny_model()
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    model.model.norm.eval()  # a submodule deliberately in eval mode stays so
    widths: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda module, args, out: widths.append(args[0].shape[1])
    )
    params = SamplingParams(temperature=0, max_new_tokens=4)
    engine = shared_engine(model)
    engine.eos_token_ids = []
    out = engine.generate(PROMPTS[:1], params)[0]
    hook.remove()
    assert widths == [len(PROMPTS[0]), 1, 1, 1], "decoding must use the KV cache"
    assert model.training and not model.model.norm.training
    assert torch.is_grad_enabled()
    reference = shared_engine(tiny_model().eval())
    reference.eos_token_ids = []
    assert out.token_ids == reference.generate(PROMPTS[:1], params)[0].token_ids


def test_peft_wrapped_model_generates_with_matching_log_probs() -> None:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model(), lora)
    outputs = shared_engine(model).generate(PROMPTS, SamplingParams(max_new_tokens=6, seed=0))
    assert_log_probs_match(model, PROMPTS, outputs)


# ---------------------------------------------------------------------- weight sync
def _train_step(model: Any, lr: float = 1e-2) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batch = torch.tensor([PROMPTS[2]])
    model.train()
    model(batch, labels=batch).loss.backward()
    optimizer.step()
    model.eval()


def test_shared_engine_sees_training_updates_without_a_copy() -> None:
    model = tiny_model()
    engine = shared_engine(model)
    params = SamplingParams(n=2, max_new_tokens=6, seed=0)
    before = engine.generate(PROMPTS, params)
    _train_step(model, lr=0.5)
    engine.update_weights(iter(model.state_dict().items()))  # a no-op that drains the iterator
    after = engine.generate(PROMPTS, params)
    assert_log_probs_match(model, PROMPTS, after)
    assert [o.log_probs for o in after] != [o.log_probs for o in before]


def test_own_copy_follows_update_weights(tmp_path: Any) -> None:
    path = tmp_path / "policy"
    tiny_model().save_pretrained(path)
    engine = HFEngine()
    engine.setup(model_path=str(path), tokenizer=TOKENIZER)
    assert not engine.shares_model
    from transformers import AutoModelForCausalLM

    actor = AutoModelForCausalLM.from_pretrained(path)
    _train_step(actor, lr=0.5)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    trained = shared_engine(actor).generate(PROMPTS, params)
    stale = engine.generate(PROMPTS, params)
    assert [o.log_probs for o in stale] != [o.log_probs for o in trained]
    items = list(actor.state_dict().items())
    engine.update_weights(iter(items[: len(items) // 2]))  # fed in two buckets
    engine.update_weights(iter(items[len(items) // 2 :]))
    synced = engine.generate(PROMPTS, params)
    assert [o.token_ids for o in synced] == [o.token_ids for o in trained]
    for a, b in zip(synced, trained, strict=True):
        assert a.log_probs == pytest.approx(b.log_probs, abs=1e-5)
    assert_log_probs_match(actor, PROMPTS, synced)
    with pytest.raises(KeyError, match="base_model.model.lm_head.weight"):
        engine.update_weights([("base_model.model.lm_head.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights([("model.norm.weight", torch.zeros(3))])


# ---------------------------------------------------------------------- fast loop
def test_sample_next_draws_what_multinomial_draws() -> None:
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    logits[:, :5] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    expected_gen, gen = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(5):
        expected = torch.multinomial(probs, 1, generator=expected_gen).squeeze(-1)
        noise = exponential_noise((6, 50), device=torch.device("cpu"), generator=gen)
        got = sample_next(logits, temperature=1.0, top_k=-1, top_p=1.0, noise=noise)
        assert got.tolist() == expected.tolist()


def test_top_p_applies_to_what_top_k_left() -> None:
    # probs 0.4 0.3 0.2 0.06 0.04; top-3 renormalised: 4/9 3/9 2/9, mass ranked above each
    # token 0, 4/9 = 0.444, 7/9 = 0.778: top_p 0.8 keeps all three, 0.7 the first two
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]]).log()
    inf = float("-inf")
    kept = filter_logits(logits, top_k=3, top_p=0.8)
    assert torch.isinf(kept).tolist() == [[False, False, False, True, True]]
    kept = filter_logits(logits, top_k=3, top_p=0.7)
    assert kept[0, 2] == inf and torch.equal(kept[0, :2], logits[0, :2])
    # without top-k, 0.7 keeps 0.4 and 0.3 too (mass above the third: 0.7), 0.75 three
    assert torch.isinf(filter_logits(logits, top_k=-1, top_p=0.75)).sum() == 2


def _forward_batch_sizes(model: Any) -> tuple[list[int], Any]:
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    return sizes, hook


def test_finished_rows_leave_the_batch_without_changing_the_samples(model: Any) -> None:
    params = SamplingParams(n=4, max_new_tokens=12, seed=2, stop_token_ids=list(range(90, 140)))
    kept = shared_engine(model, compact_at=2.0)  # never drops rows
    dropping = shared_engine(model, compact_at=0.01)  # drops at the first finished row
    sizes, hook = _forward_batch_sizes(model)
    expected = kept.generate(PROMPTS, params)
    full_sizes = list(sizes)
    sizes.clear()
    got = dropping.generate(PROMPTS, params)
    hook.remove()
    assert full_sizes == [3] + [12] * 11  # the prefill: one row per prompt
    assert sizes[0] == 3 and sizes[-1] < 12 and sizes[1:] == sorted(sizes[1:], reverse=True)
    assert len({len(o.token_ids) for o in got}) > 2  # rows stopped at different steps
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert [o.finish_reason for o in got] == [o.finish_reason for o in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.log_probs == pytest.approx(b.log_probs, abs=1e-5)
    assert_log_probs_match(model, PROMPTS, got)


def test_checking_every_few_steps_keeps_a_batch_s_samples(model: Any) -> None:
    params = SamplingParams(n=2, max_new_tokens=10, seed=5, stop_token_ids=list(range(90, 140)))
    every_step = shared_engine(model, check_every=1).generate(PROMPTS, params)
    sizes, hook = _forward_batch_sizes(model)
    every_4 = shared_engine(model, check_every=4).generate(PROMPTS, params)
    hook.remove()
    assert [o.token_ids for o in every_4] == [o.token_ids for o in every_step]
    assert [o.finish_reason for o in every_4] == [o.finish_reason for o in every_step]
    drops = [i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1]]
    assert drops and all(i % 4 == 0 for i in drops)  # the batch shrinks only at checks
    with pytest.raises(ValueError, match="check_every"):
        HFEngine.Config(check_every=0)


def test_compile_decode_compiles_the_decoding_forward_once(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[Any] = []

    def fake_compile(fn: Any, **options: Any) -> Any:  # the wiring, not the compiler
        compiled.append(options)
        widths: list[int] = []

        def run(**kwargs: Any) -> Any:
            widths.append(kwargs["input_ids"].shape[1])
            return fn(**kwargs)

        run.widths = widths  # type: ignore[attr-defined]
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    engine = shared_engine(model, compile_decode=True)
    engine.eos_token_ids = []
    params = SamplingParams(n=2, max_new_tokens=4, seed=0)
    got = engine.generate(PROMPTS, params)
    engine.generate(PROMPTS, params)
    assert compiled == [{"dynamic": True}]
    assert engine._compiled is not None
    assert engine._compiled[1].widths == [1, 1, 1] * 2  # decoding steps only
    eager = shared_engine(model)
    eager.eos_token_ids = []
    assert [o.token_ids for o in got] == [o.token_ids for o in eager.generate(PROMPTS, params)]


def test_preallocated_cache_refuses_more_positions_than_it_has_room_for() -> None:
    layer = PreallocatedLayer(capacity=3)
    keys = torch.ones(2, 1, 2, 4)
    out, _ = layer.update(keys, keys * 2)
    assert out.shape == (2, 1, 2, 4) and layer.get_seq_length() == 2
    layer.batch_select_indices(torch.tensor([1]))
    out, values = layer.update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
    assert out[0, 0, :, 0].tolist() == [1, 1, 0] and values[0, 0, :, 0].tolist() == [2, 2, 0]
    with pytest.raises(RuntimeError, match="room for 3"):
        layer.update(keys[:1, :, :1], keys[:1, :, :1])


def test_dropping_rows_moves_the_kept_ones_to_the_front_in_place() -> None:
    layer = PreallocatedLayer(capacity=4)
    keys = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()  # row r holds r
    layer.update(keys, keys + 10)
    pointer = layer.key_buffer.data_ptr()
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert layer.key_buffer.data_ptr() == pointer  # the same storage, no copy of it
    assert layer.keys[:, 0, :, 0].tolist() == [[2, 2], [0, 0]]
    assert layer.values[:, 0, :, 0].tolist() == [[12, 12], [10, 10]]
    out, _ = layer.update(torch.full((2, 1, 1, 2), 7.0), torch.zeros(2, 1, 1, 2))
    assert out[:, 0, :, 0].tolist() == [[2, 2, 7], [0, 0, 7]]


def test_copying_rows_gathers_them_into_larger_buffers() -> None:
    layer = PreallocatedLayer(capacity=3)
    keys = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 2, 2).contiguous()  # row r holds r
    layer.update(keys, keys + 10)
    layer.batch_select_indices(torch.tensor([0, 0, 1]))
    assert layer.key_buffer.shape == (3, 1, 3, 2) and layer.get_seq_length() == 2
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 0], [0, 0], [1, 1]]
    assert layer.values[:, 0, :, 0].tolist() == [[10, 10], [10, 10], [11, 11]]
    out, _ = layer.update(torch.full((3, 1, 1, 2), 7.0), torch.zeros(3, 1, 1, 2))
    assert out[:, 0, :, 0].tolist() == [[0, 0, 7], [0, 0, 7], [1, 1, 7]]


def test_prompt_runs_find_each_prompt_s_rows() -> None:
    runs = prompt_runs([4, 4, 5, 6, 6, 6], torch.device("cpu"))
    assert runs is not None
    assert runs.first.tolist() == [0, 2, 3] and runs.source.tolist() == [0, 0, 1, 2, 2, 2]
    assert prompt_runs([4, 5, 4], torch.device("cpu")) is None  # one row each: no sharing


@pytest.mark.parametrize("batch_size", [64, 5], ids=["one-batch", "runs-split-by-batches"])
def test_a_prompt_prefilled_once_gives_its_rows_per_row_prefill_samples(
    model: Any, batch_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = SamplingParams(n=3, max_new_tokens=6, seed=4, stop_token_ids=list(range(90, 140)))
    sizes, hook = _forward_batch_sizes(model)
    try:
        shared = shared_engine(model, max_batch_size=batch_size).generate(PROMPTS, params)
        prefill = sizes[0]
        monkeypatch.setattr(hf, "prompt_runs", lambda *_: None)  # a prefill row per sample
        per_row = shared_engine(model, max_batch_size=batch_size).generate(PROMPTS, params)
    finally:
        hook.remove()
    if batch_size == 64:
        assert prefill == 3  # three prompts, nine rows
    assert [o.token_ids for o in shared] == [o.token_ids for o in per_row]
    assert [o.log_probs for o in shared] == [o.log_probs for o in per_row]  # bitwise here
    assert_log_probs_match(model, PROMPTS, shared)


def test_every_forward_returns_the_last_position_s_logits_only(model: Any) -> None:
    widths: list[int] = []
    hook = model.register_forward_hook(lambda _m, _a, out: widths.append(out.logits.shape[1]))
    engine = shared_engine(model)
    engine.eos_token_ids = []
    try:
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=3, seed=0))
    finally:
        hook.remove()
    assert widths == [1, 1, 1]  # the prefill too: no [B, P, V] logits
