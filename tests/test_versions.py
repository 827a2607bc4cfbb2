"""First-party packages are released in lockstep: one version, compatible core ranges."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

from lightrft_core import __version__
from lightrft_core.plugins import core_requirement

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIRS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())


def _version_in(path: Path) -> str:
    match = re.search(r'^__version__ = "([^"]+)"$', path.read_text(), re.MULTILINE)
    assert match, f"{path} has no __version__ line"
    return match.group(1)


def test_there_is_at_least_one_first_party_plugin() -> None:
    assert PLUGIN_DIRS


def test_every_first_party_package_has_the_core_version() -> None:
    versions = {"lightrft_core": __version__}
    for plugin in PLUGIN_DIRS:
        (version_file,) = plugin.glob("src/*/_version.py")
        versions[plugin.name] = _version_in(version_file)
    drifted = {name: v for name, v in versions.items() if v != __version__}
    assert not drifted, (
        f"versions drifted from {__version__}: {drifted}; run scripts/set_version.py"
    )


def test_every_plugin_requires_a_compatible_core_range() -> None:
    for plugin in PLUGIN_DIRS:
        project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
        reqs = [Requirement(r) for r in project["dependencies"]]
        core = [r for r in reqs if r.name == "lightrft-core"]
        assert len(core) == 1, f"{plugin.name} must depend on lightrft-core"
        assert core[0].specifier.contains(__version__), f"{plugin.name}: {core[0]}"
        expected = Requirement(core_requirement()).specifier
        assert core[0].specifier == expected, f"{plugin.name}: use {core_requirement()}"


def test_every_plugin_follows_the_package_layout() -> None:
    for plugin in PLUGIN_DIRS:
        name = plugin.name.removeprefix("lightrft-plugin-")
        package = plugin / "src" / f"lightrft_plugin_{name.replace('-', '_')}"
        project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
        assert project["name"] == plugin.name
        assert (package / "py.typed").is_file(), f"{package} lacks py.typed"
        assert (plugin / "README.md").is_file() and (plugin / "tests").is_dir()
        entry_points = project["entry-points"]["lightrft"]
        assert entry_points == {name: f"lightrft_plugin_{name.replace('-', '_')}.plugin"}


def test_mypy_checks_every_package_we_ship() -> None:
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    sources = [f"plugins/{plugin.name}/src" for plugin in PLUGIN_DIRS]
    packages = [
        f"{src}/lightrft_plugin_{plugin.name.removeprefix('lightrft-plugin-').replace('-', '_')}"
        for src, plugin in zip(sources, PLUGIN_DIRS, strict=True)
    ]
    assert mypy["files"] == ["lightrft_core", "lightrft_cli", *packages]
    assert mypy["mypy_path"] == sources


def test_core_requirement_rule() -> None:
    assert core_requirement("0.1.3") == "lightrft-core>=0.1.0,<0.2"
    assert core_requirement("1.4.0") == "lightrft-core>=1.4.0,<2"
