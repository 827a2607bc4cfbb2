"""What runs without SGLang (config, conversions with fake result dicts, buckets, sleep
bookkeeping with a fake engine object, the missing-sglang error); the integration test
skips: SGLang needs CUDA and has never been run by this project."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from lightrft_core.interfaces import SamplingParams
from lightrft_plugin_sglang.engine import (
    SGLangEngine,
    import_sglang,
    list_lazily,
    output_from_result,
    sampling_dict,
    tensor_buckets,
)


def test_config_validation() -> None:
    assert SGLangEngine.Config().tp_size == 1
    for bad in (
        {"tp_size": 0},
        {"mem_fraction_static": 0},
        {"dtype": "x"},
        {"update_bucket_mb": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SGLangEngine.Config(**bad)
    kwargs = SGLangEngine(SGLangEngine.Config(context_length=64)).engine_kwargs("/m")
    assert kwargs["skip_tokenizer_init"] is True and kwargs["context_length"] == 64
    assert kwargs["enable_memory_saver"] is True


def test_sampling_dict() -> None:
    params = SamplingParams(temperature=0.5, top_k=-1, max_new_tokens=9, stop_token_ids=[4])
    out = sampling_dict(params, eos_token_ids=[258], seed=3)
    assert out["temperature"] == 0.5 and out["top_k"] == -1 and out["max_new_tokens"] == 9
    assert out["stop_token_ids"] == [4, 258] and out["sampling_seed"] == 3
    assert out["no_stop_trim"] is True
    assert "sampling_seed" not in sampling_dict(params, eos_token_ids=[])


def test_output_from_result() -> None:
    result = {
        "output_ids": [5, 258],
        "meta_info": {
            "output_token_logprobs": [(-0.5, 5, None), (-1.5, 258, None)],
            "finish_reason": {"type": "stop", "matched": 258},
        },
    }
    out = output_from_result(result, 2)
    assert (out.prompt_index, out.token_ids, out.log_probs) == (2, [5, 258], [-0.5, -1.5])
    assert out.finish_reason == "stop"
    length = output_from_result({"output_ids": [1], "meta_info": {"finish_reason": None}}, 0)
    assert length.finish_reason == "length" and length.log_probs == []
    bad = {"output_ids": [1], "meta_info": {"output_token_logprobs": [(-1.0, 2, None)]}}
    with pytest.raises(RuntimeError, match="do not follow"):
        output_from_result(bad, 0)


def test_buckets_and_last_flag() -> None:
    state = [(f"w{i}", torch.zeros(256)) for i in range(5)]  # 1 KiB each
    buckets = list(tensor_buckets(iter(state), max_bytes=2048))
    assert [len(b) for b in buckets] == [2, 2, 1]
    assert [last for _, last in list_lazily(iter(buckets))] == [False, False, True]


class FakeSGLang:
    """Records the calls the engine makes (a stand-in for ``sglang.Engine``)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def generate(self, input_ids, sampling_params, return_logprob):
        self.calls.append(("generate", len(input_ids)))
        return [
            {
                "output_ids": [7, 258],
                "meta_info": {
                    "output_token_logprobs": [(-1.0, 7, None), (-2.0, 258, None)],
                    "finish_reason": {"type": "stop"},
                },
            }
            for _ in input_ids
        ]

    def update_weights_from_tensor(self, named_tensors, flush_cache):
        self.calls.append(("update", len(named_tensors), flush_cache))

    def release_memory_occupation(self, tags=None):
        self.calls.append(("release", tags))

    def resume_memory_occupation(self, tags=None):
        self.calls.append(("resume", tags))

    def shutdown(self):
        self.calls.append(("shutdown",))


def test_engine_flow_with_a_fake_backend() -> None:
    engine = SGLangEngine(SGLangEngine.Config(update_bucket_mb=1))
    fake = engine.engine = FakeSGLang()
    outs = engine.generate([[1, 2], [3]], SamplingParams(n=2, seed=0))
    assert [o.prompt_index for o in outs] == [0, 0, 1, 1] and outs[0].log_probs == [-1.0, -2.0]
    engine.sleep()
    engine.update_weights(iter([("a", torch.zeros(2**18)), ("b", torch.zeros(2**18))]))
    engine.wake_up()
    assert fake.calls[1:] == [
        ("release", None),
        ("resume", ["weights"]),
        ("update", 1, False),
        ("update", 1, True),
        ("resume", ["kv_cache"]),
    ]


def test_plugin_import_is_cheap_and_missing_sglang_is_explained(monkeypatch) -> None:
    code = (
        "import sys; import lightrft_plugin_sglang.plugin; "
        "from lightrft_plugin_sglang.engine import SGLangEngine; "
        "assert 'sglang' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "sglang", None)
    with pytest.raises(ImportError, match="sglang\\[all\\]"):
        import_sglang()


@pytest.mark.skipif(
    importlib.util.find_spec("sglang") is None,
    reason="sglang is not installed: it needs CUDA GPUs, which this project's machines lack",
)
def test_real_engine_generates_with_log_probs(tmp_path) -> None:  # pragma: no cover
    from lightrft_core.models.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path / "m")
    engine = SGLangEngine()
    engine.setup(model_path=str(path))
    outs = engine.generate([[72, 105]], SamplingParams(n=2, max_new_tokens=4, seed=0))
    assert len(outs) == 2 and all(len(o.log_probs) == len(o.token_ids) for o in outs)
    engine.shutdown()
