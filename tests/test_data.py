"""Data sources, prompt datasets, the resumable sampler and SFT data."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.config.schema import DataConfig
from lightrft_core.data import (
    DataError,
    PromptDataset,
    PromptSampler,
    SFTDataset,
    collate,
    format_prompt,
    read_rows,
)
from lightrft_core.models.tiny import build_byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def plain_tokenizer() -> Any:
    tok = build_byte_tokenizer()
    tok.chat_template = None
    return tok


def write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


GOOD = json.dumps({"prompt": "2+2?", "answer": "4"})


# ---------------------------------------------------------------------- read_rows: JSONL
def test_jsonl_rows_are_read_and_blank_lines_ignored(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "data.jsonl", [GOOD, "", json.dumps({"prompt": "x", "id": 3})])
    result = read_rows(src, required_keys=["prompt"])
    assert result.rows == [{"prompt": "2+2?", "answer": "4"}, {"prompt": "x", "id": 3}]
    assert result.skipped == 0


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"prompt": ', "not valid JSON: Expecting value at column 12"),
        (
            json.dumps({"question": "q", "answer": "a"}),
            "missing key 'prompt' (keys present: question, answer)",
        ),
        (json.dumps({"prompt": "  ", "answer": "a"}), "empty 'prompt'"),
        (json.dumps({"prompt": None}), "empty 'prompt'"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_jsonl_malformed_row_names_file_line_and_key(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    src = write_jsonl(tmp_path / "data.jsonl", [GOOD, "", bad_line, GOOD])
    with pytest.raises(DataError) as info:
        read_rows(src, required_keys=["prompt"])
    assert str(info.value) == (
        f"{src}:3: {message} (set data.skip_malformed=true to skip such rows)"
    )


def test_jsonl_invalid_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"data\.jsonl:2: not UTF-8 text"):
        read_rows(str(path), required_keys=["prompt"])


def test_skip_malformed_counts_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [GOOD, "oops", json.dumps({"q": 1}), GOOD, json.dumps({"prompt": ""})]
    src = write_jsonl(tmp_path / "data.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="lightrft.data"):
        result = read_rows(src, required_keys=["prompt"], skip_malformed=True)
    assert len(result.rows) == 2
    assert result.skipped == 3
    assert result.problems == [
        f"{src}:2: not valid JSON: Expecting value at column 1",
        f"{src}:3: missing key 'prompt' (keys present: q)",
        f"{src}:5: empty 'prompt'",
    ]
    records = [r for r in caplog.records if r.name == "lightrft.data"]
    assert len(records) == 1
    assert records[0].getMessage().startswith(f"{src}: skipped 3 malformed row(s): {src}:2: ")


def test_only_malformed_rows_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "data.jsonl", ["nope"])
    with pytest.raises(DataError) as info:
        read_rows(src, required_keys=["prompt"], skip_malformed=True)
    assert str(info.value) == (
        f"{src}: no usable rows (all 1 rows are malformed, e.g. "
        f"{src}:1: not valid JSON: Expecting value at column 1)"
    )


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "data.jsonl", [""])
    with pytest.raises(DataError, match=r"no usable rows \(it is empty\)"):
        read_rows(src)


# ---------------------------------------------------------------------- other sources
def test_json_list_errors_name_the_item(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"prompt": "a"}] * 4 + [{"question": "b"}]))
    with pytest.raises(DataError) as info:
        read_rows(str(path), required_keys=["prompt"])
    assert str(info.value).startswith(
        f"{path}: item 4: missing key 'prompt' (keys present: question)"
    )
    assert len(read_rows(str(path), required_keys=["prompt"], skip_malformed=True).rows) == 4


def test_json_must_be_a_valid_list(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"prompt": "a"}')
    with pytest.raises(DataError, match=r"expected a JSON list of objects, got dict"):
        read_rows(str(path))
    path.write_text("[{]")
    with pytest.raises(DataError, match=r"data\.json: not valid JSON: .* at line 1 column 3"):
        read_rows(str(path))


def test_parquet_rows_and_row_errors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    table = pa.table({"prompt": ["a", "b", "", "d"], "answer": ["1", "2", "3", "4"]})
    pq.write_table(table, path)
    with pytest.raises(DataError) as info:
        read_rows(str(path), required_keys=["prompt", "answer"])
    assert str(info.value).startswith(f"{path}: row 2: empty 'prompt'")
    rows = read_rows(str(path), required_keys=["prompt"], skip_malformed=True).rows
    assert rows[-1] == {"prompt": "d", "answer": "4"}


def test_saved_dataset_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_list([{"prompt": "p1", "answer": "1"}, {"prompt": "p2"}]).save_to_disk(
        str(folder)
    )
    result = read_rows(str(folder), required_keys=["prompt"])
    assert [r["prompt"] for r in result.rows] == ["p1", "p2"]
    with pytest.raises(DataError, match=r"ds: row 1: empty 'answer'"):
        read_rows(str(folder), required_keys=["prompt", "answer"])


def test_datasets_source_without_datasets_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError) as info:
        read_rows("hf:openai/gsm8k:main:train")
    assert "pip install lightrft-core[datasets]" in str(info.value)


def test_missing_file_and_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_rows(str(tmp_path / "nope.jsonl"))
    assert str(info.value) == f"{tmp_path / 'nope.jsonl'}: file not found"
    with pytest.raises(DataError, match=r"not found; a data source is a \.jsonl"):
        read_rows(str(tmp_path / "gsm8k"))
    (tmp_path / "data.csv").write_text("prompt\nx\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        read_rows(str(tmp_path / "data.csv"))


# ---------------------------------------------------------------------- prompts
def test_chat_template_with_system_prompt(tokenizer: Any) -> None:
    rows = [{"prompt": "2+2?", "answer": "4", "source": "gsm8k"}]
    ds = PromptDataset(rows, tokenizer, system_prompt="Be brief.", max_prompt_length=None)
    item = ds[0]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert item.prompt_text == expected
    assert item.prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(item.prompt_ids) == expected
    assert item.label == "4"
    assert item.metadata == {"source": "gsm8k"}


def test_raw_prompt_without_template(tokenizer: Any, plain_tokenizer: Any) -> None:
    for tok, apply in ((plain_tokenizer, True), (tokenizer, False)):
        ds = PromptDataset([{"prompt": "hi"}], tok, system_prompt="sys", apply_chat_template=apply)
        assert ds[0].prompt_text == "sys\nhi"
        assert ds[0].prompt_ids == list(b"sys\nhi")
        assert ds[0].label is None
    assert format_prompt(plain_tokenizer, "hi") == "hi"


def test_conversation_prompts_use_their_messages(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    text = format_prompt(tokenizer, [*messages, {"role": "user", "content": "c"}])
    assert text.count("<|im_start|>") == 4
    assert text.endswith("<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n")


def test_long_prompts_are_filtered_and_counted(plain_tokenizer: Any) -> None:
    rows = [{"prompt": "x" * n, "answer": str(n)} for n in (3, 10, 5, 11)]
    ds = PromptDataset(rows, plain_tokenizer, max_prompt_length=5)
    assert [item.label for item in ds] == ["3", "5"]
    assert ds.num_filtered == 2
    with pytest.raises(DataError, match=r"no prompts left: all 4 are longer than"):
        PromptDataset(rows, plain_tokenizer, max_prompt_length=2)


def test_from_source_uses_the_data_config(tmp_path: Path, tokenizer: Any) -> None:
    src = write_jsonl(
        tmp_path / "data.jsonl",
        [
            json.dumps({"question": "q1", "solution": "1"}),
            json.dumps({"question": "q2"}),
            json.dumps({"question": "q3", "solution": "3"}),
        ],
    )
    cfg = DataConfig(input_key="question", label_key="solution", skip_malformed=True)
    ds = PromptDataset.from_source(src, tokenizer, cfg)
    assert [item.label for item in ds] == ["1", "3"]
    assert ds.num_skipped == 1
    ds = PromptDataset.from_source(src, tokenizer, cfg, require_label=False)
    assert [item.label for item in ds] == ["1", None, "3"]
    strict = DataConfig(input_key="question", label_key="solution")
    with pytest.raises(DataError, match=r"data\.jsonl:2: missing key 'solution' \(keys present"):
        PromptDataset.from_source(src, tokenizer, strict)


# ---------------------------------------------------------------------- sampler
def take(sampler: PromptSampler, k: int) -> list[list[int]]:
    return [sampler.next_indices() for _ in range(k)]


def test_sampler_shuffles_each_epoch_and_wraps() -> None:
    data = list(range(10))
    batches = take(PromptSampler(data, 4, seed=3), 5)  # 20 items = 2 epochs
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == data and sorted(flat[10:]) == data
    assert flat[:10] != flat[10:]  # a new order each epoch
    assert take(PromptSampler(data, 4, seed=3), 5) == batches  # deterministic
    assert take(PromptSampler(data, 4, seed=4), 5) != batches
    assert take(PromptSampler(data, 4, shuffle=False), 3)[2] == [8, 9, 0, 1]


def test_sampler_resumes_exactly() -> None:
    data = [f"p{i}" for i in range(7)]
    reference = PromptSampler(data, 3, seed=1)
    expected = [next(reference) for _ in range(8)]
    first = PromptSampler(data, 3, seed=1)
    consumed = [next(first) for _ in range(5)]
    state = first.state_dict()
    resumed = PromptSampler(data, 3, seed=999)
    resumed.load_state_dict(state)
    assert consumed + [next(resumed) for _ in range(3)] == expected
    with pytest.raises(ValueError, match="saved data position is for 7 prompts"):
        PromptSampler(data[:5], 3).load_state_dict(state)


def test_sampler_ranks_share_the_global_batch() -> None:
    data = list(range(9))
    whole = take(PromptSampler(data, 4, seed=0), 3)
    parts = [take(PromptSampler(data, 4, seed=0, rank=r, world_size=2), 3) for r in (0, 1)]
    assert [a + b for a, b in zip(parts[0], parts[1], strict=True)] == whole
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        PromptSampler(data, 3, world_size=2)


# ---------------------------------------------------------------------- SFT
def test_sft_loss_mask_covers_response_and_eos(tokenizer: Any) -> None:
    rows = [{"prompt": "Say hi", "response": "hi!"}, {"prompt": "Count", "response": "1 2 3"}]
    ds = SFTDataset(rows, tokenizer)
    for item, row in zip(ds, rows, strict=True):
        target = [t for t, m in zip(item.input_ids, item.loss_mask, strict=True) if m]
        assert target == [*row["response"].encode(), tokenizer.eos_token_id]
        n_prompt = item.loss_mask.index(1)
        assert tokenizer.decode(item.input_ids[:n_prompt]) == item.prompt_text
        assert item.prompt_text.endswith("<|im_start|>assistant\n")
        assert all(item.loss_mask[n_prompt:])

    batch = collate(list(ds), pad_id=tokenizer.pad_token_id)
    lengths = [len(item.input_ids) for item in ds]
    assert batch["input_ids"].shape == (2, max(lengths))
    short = lengths.index(min(lengths))
    assert batch["attention_mask"][short].tolist() == [1] * lengths[short] + [0] * (
        max(lengths) - lengths[short]
    )
    assert (batch["input_ids"][short, lengths[short] :] == tokenizer.pad_token_id).all()
    assert batch["loss_mask"].dtype == torch.bool
    assert int(batch["loss_mask"].sum()) == len("hi!") + len("1 2 3") + 2
    assert not (batch["loss_mask"] & (batch["attention_mask"] == 0)).any()


def test_sft_from_source_and_length_filter(tmp_path: Path, plain_tokenizer: Any) -> None:
    src = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            json.dumps({"prompt": "a", "response": "b"}),
            json.dumps({"prompt": "a", "response": ""}),
            json.dumps({"prompt": "a", "response": "long" * 10}),
        ],
    )
    with pytest.raises(DataError, match=r"sft\.jsonl:2: empty 'response'"):
        SFTDataset.from_source(src, plain_tokenizer, DataConfig())
    ds = SFTDataset.from_source(src, plain_tokenizer, DataConfig(skip_malformed=True), max_length=8)
    assert len(ds) == 1 and ds.num_skipped == 1 and ds.num_filtered == 1
    assert ds[0].input_ids == [*b"ab", plain_tokenizer.eos_token_id]
    assert ds[0].loss_mask == [0, 1, 1]
