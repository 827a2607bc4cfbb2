"""The MLflow tracker's conversions and its store (the real run is in tests/test_trackers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightrft_plugin_mlflow.tracker import (
    MAX_PARAM_LENGTH,
    MlflowOptions,
    metric_key,
    param_value,
    tracking_uri,
)


def test_config_values_become_params() -> None:
    assert param_value("grpo") == "grpo"
    assert param_value(0.003) == "0.003"
    assert param_value(None) == "null"
    assert param_value(["console", "jsonl"]) == '["console", "jsonl"]'
    assert len(param_value("x" * (MAX_PARAM_LENGTH + 5))) == MAX_PARAM_LENGTH


def test_metric_names_mlflow_refuses_are_cleaned() -> None:
    assert metric_key("reward/mean") == "reward/mean"
    assert metric_key("reward/[red]ok") == "reward/_red_ok"


def test_the_store_defaults_to_a_folder_in_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(MlflowOptions(), tmp_path) == (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(MlflowOptions(), tmp_path) == "http://mlflow:5000"
    assert tracking_uri(MlflowOptions(tracking_uri="sqlite:///x.db"), tmp_path) == "sqlite:///x.db"
