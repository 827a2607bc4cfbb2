"""End to end: a generated third-party plugin installs with pip, is discovered without
touching the core, resolves in ``lightrft train --dry-run``, and its own tests pass."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lightrft_cli.scaffold import KINDS, new_plugin
from lightrft_core.config import COMPONENT_SECTIONS
from lightrft_core.plugins import core_requirement

pytestmark = [pytest.mark.slow, pytest.mark.installed_plugins]

SECTION_OVERRIDES = {
    "model.name": "fake",
    "strategy.name": "fake",
    "engine.name": "fake",
    "reward.name": "constant",
    "algorithm.name": "grpo",
}


def run(args: list[str], env: dict[str, str], cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def install(target, *roots) -> dict[str, str]:
    """pip-install plugin folders into ``target`` (never into the test environment), all in
    one pip call, and return the environment of a process that sees them, with autoloading
    on."""
    args = ["install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target)]
    pip = run([sys.executable, "-m", "pip", *args, *map(str, roots)], dict(os.environ))
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("LIGHTRFT_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


@dataclass
class Generated:
    """A plugin of every kind, generated and installed together, and what ``lightrft plugins
    --json`` lists then."""

    roots: dict[str, Path]
    env: dict[str, str]
    plugins: dict[str, dict]
    #: one pytest run over every package's own tests: its output, and the outcomes
    #: (``PASSED`` ...) by package folder
    test_output: str
    outcomes: dict[str, list[str]]


def run_their_tests(folder: Path, env: dict[str, str]) -> tuple[str, dict[str, list[str]]]:
    """The tests of the packages in ``folder``, in one pytest process (a start-up each would
    cost seconds): the output and each package folder's test outcomes."""
    (folder / "pytest.ini").write_text("[pytest]\n")  # the root: test ids start at a package
    args = ["-v", "-p", "no:cacheprovider", "--import-mode=importlib"]  # no tests/__init__
    roots = sorted(p.name for p in folder.glob("lightrft-plugin-*"))
    tests = run([sys.executable, "-m", "pytest", *args, *roots], env, cwd=folder)
    output = tests.stdout + tests.stderr
    assert tests.returncode == 0, output
    outcomes: dict[str, list[str]] = {}
    for match in re.finditer(
        r"^([\w.-]+)/tests/\S+::\S+ (PASSED|FAILED|ERROR|SKIPPED)", output, re.M
    ):
        outcomes.setdefault(match[1], []).append(match[2])
    return output, outcomes


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    """A plugin of every kind, generated, installed in one pip call, listed, and its tests
    run."""
    src = tmp_path_factory.mktemp("generated")
    roots = {kind: new_plugin(f"acme-{kind}", kind, src / "packages") for kind in sorted(KINDS)}
    env = install(src / "site", *roots.values())
    listed = run([sys.executable, "-m", "lightrft_cli", "plugins", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    return Generated(roots, env, plugins, *run_their_tests(src / "packages", env))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_generated_plugin_installs_is_discovered_and_passes_its_tests(
    kind: str, generated: Generated
) -> None:
    name = f"acme-{kind}"
    component = name.replace("-", "_")
    root, env, plugins = generated.roots[kind], generated.env, generated.plugins
    assert plugins[name]["status"] == "ok", plugins[name]
    assert plugins[name]["distribution"] == f"lightrft-plugin-{name}"
    assert plugins[name]["version"] == "0.1.0"
    assert plugins[name]["components"] == [f"{kind}:{component}"]

    section = next((s for s, k in COMPONENT_SECTIONS.items() if k == kind), None)
    if section is not None:  # patches are not selected by a configuration section
        overrides = {**SECTION_OVERRIDES, f"{section}.name": component}
        args = ["train", "--plugin", name, "--dry-run", *(f"{k}={v}" for k, v in overrides.items())]
        dry_run = run([sys.executable, "-m", "lightrft_cli", *args], env)
        assert dry_run.returncode == 0, dry_run.stdout + dry_run.stderr
        assert "configuration is valid" in dry_run.stdout
        assert component in dry_run.stdout

    # its conformance suite and its registration test ran, and passed
    outcomes = generated.outcomes.get(root.name, [])
    assert outcomes.count("PASSED") > 1, generated.test_output
    assert set(outcomes) <= {"PASSED", "SKIPPED"}, generated.test_output


def test_generated_package_depends_on_a_compatible_core(tmp_path) -> None:
    root = new_plugin("acme", "algorithm", tmp_path)
    text = (root / "pyproject.toml").read_text()
    assert f'"{core_requirement()}"' in text
    assert 'acme = "lightrft_plugin_acme.plugin"' in text


def test_installed_broken_and_clashing_plugins_are_reported_not_fatal(tmp_path) -> None:
    broken = new_plugin("acme-broken", "reward", tmp_path / "src")
    plugin_py = broken / "src" / "lightrft_plugin_acme_broken" / "plugin.py"
    plugin_py.write_text("import a_dependency_that_is_not_installed\n" + plugin_py.read_text())
    clash = new_plugin("acme-clash", "algorithm", tmp_path / "src")
    algo_py = clash / "src" / "lightrft_plugin_acme_clash" / "algorithm.py"
    algo_py.write_text(algo_py.read_text().replace('name = "acme_clash"', 'name = "grpo"'))
    env = install(tmp_path / "site", broken, clash)

    listed = run([sys.executable, "-m", "lightrft_cli", "plugins", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["acme-broken"]["status"] == "broken"
    assert plugins["acme-broken"]["distribution"] == "lightrft-plugin-acme-broken"
    assert "a_dependency_that_is_not_installed" in plugins["acme-broken"]["error"]
    assert "plugin 'acme-broken' (distribution lightrft-plugin-acme-broken 0.1.0)" in listed.stderr
    # Entry points load in name order, so 'acme-clash' takes the name and 'grpo' is refused.
    assert plugins["acme-clash"]["status"] == "ok"
    assert plugins["acme-clash"]["components"] == ["algorithm:grpo"]
    assert plugins["grpo"]["status"] == "broken"
    assert "by plugin 'acme-clash'" in plugins["grpo"]["error"]
    assert "by plugin 'grpo'" in plugins["grpo"]["error"]

    explicit = run(
        [sys.executable, "-m", "lightrft_cli", "train", "--plugin", "acme-broken", "--dry-run"], env
    )
    assert explicit.returncode == 2
    assert "a_dependency_that_is_not_installed" in explicit.stderr
