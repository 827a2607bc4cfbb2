"""Write a complete, installable third-party plugin package from the templates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lightrft_core import __version__
from lightrft_core.config import COMPONENT_SECTIONS
from lightrft_core.plugins import core_requirement
from lightrft_core.registry import REGISTRATION_HOOKS

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Kind:
    conformance: str
    attr: str


#: The component kinds a new plugin can start from.
KINDS: dict[str, Kind] = {
    "algorithm": Kind("AlgorithmConformance", "algorithm_cls"),
    "reward": Kind("RewardConformance", "reward_cls"),
    "engine": Kind("EngineConformance", "engine_cls"),
    "strategy": Kind("StrategyConformance", "strategy_cls"),
    "actor": Kind("ActorConformance", "actor_cls"),
    "patch": Kind("PatchConformance", "patch_cls"),
    "tracker": Kind("TrackerConformance", "tracker_cls"),
}


def _template(*parts: str) -> str:
    return resources.files("lightrft_cli").joinpath("templates", *parts).read_text("utf-8")


def _render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    leftover = re.findall(r"\{\{\w+\}\}", text)
    assert not leftover, f"template placeholders left: {leftover}"
    return text


def new_plugin(name: str, kind: str, directory: Path, *, force: bool = False) -> Path:
    """Create ``directory/lightrft-plugin-<name>/`` and return its path."""
    if not NAME_RE.match(name):
        raise ValueError(
            f"plugin name {name!r} must be lower case letters and digits separated by '-', "
            "starting with a letter (for example 'my-algo'); the component is named 'my_algo'"
        )
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    snake = name.replace("-", "_")
    dist = f"lightrft-plugin-{name}"
    package = f"lightrft_plugin_{snake}"
    root = directory / dist
    if root.exists() and not force:
        raise FileExistsError(f"{root} already exists; pass --force to overwrite it")
    section = next((s for s, k in COMPONENT_SECTIONS.items() if k == kind), None)
    if section is not None:
        usage = f"lightrft train --config run.yaml {section}.name={snake}"
        options = f"users set under `{section}:` in their configuration"
    elif kind == "tracker":  # listed in logging.trackers, options by tracker name
        usage = f"lightrft train --config run.yaml 'logging.trackers=[console, {snake}]'"
        options = f"users set under `logging.tracker_options.{snake}:` in their configuration"
    else:  # patches are applied by the actor that needs them, not selected in a section
        usage = f"# an actor applies it by name: lightrft_core.plugins.get_patch('{snake}')"
        options = "an actor passes when it applies the patch"
    values = {
        "name": name,
        "dist": dist,
        "package": package,
        "kind": kind,
        "usage": usage,
        "options": options,
        "component": snake,
        "module": kind,
        "class_name": "".join(p.capitalize() for p in snake.split("_")) + kind.capitalize(),
        "hook": REGISTRATION_HOOKS[kind],
        "conformance": KINDS[kind].conformance,
        "conformance_attr": KINDS[kind].attr,
        "core_requirement": core_requirement(__version__),
    }
    files = {
        "pyproject.toml": _template("package", "pyproject.toml.tmpl"),
        "README.md": _template("package", "README.md.tmpl"),
        f"src/{package}/__init__.py": _template("package", "__init__.py.tmpl"),
        f"src/{package}/py.typed": "",
        f"src/{package}/plugin.py": _template("package", "plugin.py.tmpl"),
        f"src/{package}/{kind}.py": _template("components", f"{kind}.py.tmpl"),
        f"tests/test_{snake}.py": _template("package", "test_plugin.py.tmpl"),
    }
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_render(text, values), encoding="utf-8")
    return root
