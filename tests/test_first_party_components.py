"""The install story: a missing first-party component names the distribution to install.

``FIRST_PARTY_COMPONENTS`` is checked against what the plugins of ``plugins/`` register, so
it cannot drift; the CLI's error is checked as a user sees it (one line, no traceback).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
from pathlib import Path
from typing import Any

import pytest
import tomllib
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core import hookimpl, plugins
from lightrft_core.plugins import PluginManager
from lightrft_core.registry import (
    FIRST_PARTY_COMPONENTS,
    UnknownComponentError,
    unknown_component_message,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "dry_run.yaml")  # algorithm.name: grpo
runner = CliRunner()


def _first_party_entry_points() -> list[tuple[str, str, str]]:
    """``(distribution, entry-point name, module)`` of every plugin in ``plugins/``."""
    rows = []
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        for name, module in project["entry-points"]["lightrft"].items():
            rows.append((project["name"], name, module))
    return rows


def test_the_table_is_what_the_first_party_plugins_register() -> None:
    manager = PluginManager(builtins=False, autoload=False)
    for dist, name, module in _first_party_entry_points():
        manager.register(importlib.import_module(module), name=name, distribution=dist, strict=True)
    broken = {p.name: p.error for p in manager.plugins() if p.status == "broken"}
    assert not broken, f"first-party plugins that failed to register: {broken}"
    distribution = {p.name: p.distribution for p in manager.plugins()}
    registered = {(c.kind, c.name): distribution[c.plugin] for c in manager.registry}
    assert registered == FIRST_PARTY_COMPONENTS


@pytest.mark.parametrize(("kind", "name"), sorted(FIRST_PARTY_COMPONENTS))
def test_every_first_party_name_says_what_to_install(kind: str, name: str) -> None:
    dist = FIRST_PARTY_COMPONENTS[kind, name]
    message = unknown_component_message(kind, name, [])
    assert f"no {kind} named {name!r} is installed: it comes with {dist}" in message
    assert f"(pip install {dist})" in message


def test_other_names_get_the_closest_available_name() -> None:
    message = unknown_component_message("algorithm", "grpoo", ["grpo", "ppo"])
    assert "did you mean 'grpo'?" in message and "pip install" not in message


def _without_distribution(monkeypatch: pytest.MonkeyPatch, dist: str) -> None:
    """As if ``dist`` were not installed: its entry points disappear."""
    installed = metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)
    kept = metadata.EntryPoints(ep for ep in installed if ep.dist and ep.dist.name != dist)
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: kept)


@pytest.mark.installed_plugins
@pytest.mark.parametrize("command", [["config", "validate", EXAMPLE], ["train", "-c", EXAMPLE]])
def test_cli_without_the_grpo_distribution_says_pip_install(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # pip install lightrft-core lightrft-plugin-fsdp, then lightrft train: grpo is missing.
    _without_distribution(monkeypatch, "lightrft-plugin-grpo")
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    problem = "no algorithm named 'grpo' is installed: it comes with lightrft-plugin-grpo"
    lines = [line for line in result.output.splitlines() if problem in line]
    assert len(lines) == 1 and "(pip install lightrft-plugin-grpo)" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["config", "validate", EXAMPLE], ["train", "-c", EXAMPLE]])
def test_cli_with_autoload_off_names_the_installed_distribution(command: list[str]) -> None:
    # LIGHTRFT_DISABLE_PLUGIN_AUTOLOAD=1 (set for unit tests): installed, but not loaded.
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert (
        "no algorithm named 'grpo' is loaded: lightrft-plugin-grpo provides it and is "
        "installed, but its plugin 'grpo' is off (LIGHTRFT_DISABLE_PLUGIN_AUTOLOAD); "
        "--plugin grpo loads it." in result.output
    )
    assert "Traceback" not in result.output


class _GRPOWithoutTorch:
    """A grpo plugin whose registration fails as it would without torch."""

    @hookimpl
    def lightrft_register_algorithms(self, register: Any) -> None:
        raise ImportError("No module named 'torch'")


def test_the_manager_names_a_broken_first_party_plugin() -> None:
    manager = PluginManager(autoload=False)
    manager.register(_GRPOWithoutTorch(), name="grpo", distribution="lightrft-plugin-grpo")
    with pytest.raises(UnknownComponentError) as error:
        manager.get_algorithm("grpo")
    assert str(error.value).startswith(
        "no algorithm named 'grpo' is loaded: lightrft-plugin-grpo provides it and is "
        "installed, but its plugin 'grpo' failed to load: ImportError: No module named 'torch'."
    )
