"""The ``lightrft`` command line, driven in-process with typer's runner."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core import __version__
from lightrft_core.registry import REGISTRATION_HOOKS

runner = CliRunner()
FAKES = ["model.name=fake", "strategy.name=fake", "engine.name=fake", "reward.name=constant"]
EXAMPLE = "examples/dry_run.yaml"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_version_and_help() -> None:
    assert invoke("--version").output.strip() == f"lightrft {__version__}"
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("plugins", "train", "config", "plugin"):
        assert command in result.output


def test_python_dash_m_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lightrft_cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"lightrft {__version__}"


def test_plugins_json_lists_builtins_without_autoload() -> None:
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    plugins = {p["name"]: p for p in json.loads(result.output)}
    assert plugins["builtins"]["version"] == __version__
    assert "strategy:fake" in plugins["builtins"]["components"]
    assert plugins["grpo"]["status"] == "disabled"  # autoload is off in unit tests


FIRST_PARTY = {  # the components of each algorithm plugin, in registration order
    "grpo": [
        *(f"algorithm:{a}" for a in ("grpo", "dr_grpo", "dapo", "gspo", "gspo_token", "gmpo")),
        "advantage:grpo",
        "advantage:dapo",
        *(f"loss:{loss}" for loss in ("gspo", "gspo_token", "gmpo")),
    ],
    "reinforce": [
        *(f"algorithm:{a}" for a in ("reinforce_pp", "reinforce_pp_baseline", "rloo")),
        *(f"advantage:{a}" for a in ("reinforce_pp", "reinforce_pp_baseline", "rloo")),
    ],
    "cpgd": ["algorithm:cpgd"],
    "ppo": ["algorithm:ppo"],
}


@pytest.mark.installed_plugins
def test_plugins_json_lists_the_installed_first_party_plugins() -> None:
    result = invoke("plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(result.output)}
    for name, components in FIRST_PARTY.items():
        plugin = plugins[name]
        assert plugin["status"] == "ok", plugin
        assert plugin["distribution"] == f"lightrft-plugin-{name}"
        assert plugin["version"] == __version__
        assert plugin["components"] == components
        kinds = sorted({c.split(":")[0] for c in components})
        assert plugin["hooks"] == sorted(REGISTRATION_HOOKS[k] for k in kinds)
    for name, kind in {"fsdp": "strategy", "deepspeed": "strategy", "vllm": "engine"}.items():
        assert plugins[name]["status"] == "ok"
        assert plugins[name]["components"] == [f"{kind}:{name}"]


def test_plugins_table_shows_status() -> None:
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "builtins" in result.output and "disabled" in result.output


@pytest.mark.installed_plugins
def test_config_validate_and_train_dry_run_on_the_example() -> None:
    result = invoke("config", "validate", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    result = invoke("train", "--config", EXAMPLE, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "configuration is valid" in result.output
    assert "lightrft_plugin_grpo.grpo.GRPO" in result.output


@pytest.mark.installed_plugins
def test_train_without_a_model_path_is_a_clear_error() -> None:
    result = invoke("train", *FAKES[1:], "model.name=language", "data.train_path=x.jsonl")
    assert result.exit_code == 2
    assert "needs a model: set" in result.output


def test_misspelt_key_exits_2_with_location_and_suggestion(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  learning_rat: 1.0e-5\n")
    result = invoke(
        "config", "validate", str(path), *FAKES, "--plugin", "lightrft_plugin_grpo.plugin"
    )
    assert result.exit_code == 2
    assert f"{path}:2: trainer.learning_rat: unknown key; did you mean" in result.output
    assert "'trainer.learning_rate'" in result.output


def test_config_show_prints_yaml_with_overrides() -> None:
    result = invoke("config", "show", "trainer.max_steps=3", "engine.name=fake")
    assert result.exit_code == 0, result.output
    assert "max_steps: 3" in result.output
    assert "response_token_ids:" in result.output  # options of the fake engine


def test_config_schema_documents_every_core_key() -> None:
    from lightrft_core.config.describe import core_sections

    result = invoke("config", "schema", "--markdown")
    assert result.exit_code == 0
    for _, fields in core_sections().values():
        for f in fields:
            assert f"`{f.key}`" in result.output
    assert "`engine.name: fake` options" in result.output
    assert invoke("config", "schema", "--section", "nope").exit_code == 2


def test_unknown_plugin_is_a_clear_error() -> None:
    result = invoke("train", "--plugin", "no_such_plugin_xyz", "--dry-run")
    assert result.exit_code == 2
    assert "plugin 'no_such_plugin_xyz' not found" in result.output


def test_plugin_new_refuses_bad_names_and_existing_folders(tmp_path) -> None:
    assert invoke("plugin", "new", "Bad Name", "-d", str(tmp_path)).exit_code == 2
    assert invoke("plugin", "new", "ok", "--kind", "nope", "-d", str(tmp_path)).exit_code == 2
    assert invoke("plugin", "new", "ok", "-d", str(tmp_path)).exit_code == 0
    result = invoke("plugin", "new", "ok", "-d", str(tmp_path))
    assert result.exit_code == 2 and "already exists" in result.output


def test_config_reference_doc_is_up_to_date() -> None:
    from pathlib import Path

    from lightrft_core.config.describe import schema_markdown

    doc = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"
    assert doc.read_text() == schema_markdown(), (
        "docs/config-reference.md is stale: run "
        "'lightrft config schema --markdown --core-only > docs/config-reference.md'"
    )
