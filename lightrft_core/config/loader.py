"""Build a ``LightRFTConfig`` from defaults, a YAML file and ``key=value`` overrides.

Later sources win. Every problem is collected (not only the first) and reported with the
dotted key, the file and line (or the command-line override) and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..registry import UnknownComponentError
from .errors import ConfigError, ConfigIssue, did_you_mean
from .schema import COMPONENT_SECTIONS, OPTIONS_FIELD, LightRFTConfig
from .types import TypeMismatch, coerce, field_types, parse_text

if TYPE_CHECKING:
    from ..plugins import PluginManager

Path_ = tuple[str, ...]


@dataclass
class _Override:
    """A command-line value, parsed once the target field's type is known."""

    text: str


@dataclass
class _Sources:
    """Where each key came from: ``file:line`` or ``command line 'k=v'``."""

    file: str | None = None
    keys: dict[Path_, str] = field(default_factory=dict)

    def where(self, path: Path_) -> str | None:
        for end in range(len(path), 0, -1):  # the key itself, else its closest parent
            if path[:end] in self.keys:
                return self.keys[path[:end]]
        for key, where in self.keys.items():  # a section only written as 'a.b=c'
            if key[: len(path)] == path:
                return where
        return self.file


# ---------------------------------------------------------------------- reading sources
def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[Path_, str]]:
    """The mapping in a YAML file and the ``file:line`` of every key in it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([ConfigIssue("", f"config file not found: {path}")])
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("", f"not valid YAML: {problem}", where)]) from exc
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            [ConfigIssue("", "the top level must be a mapping of sections", f"{path}:1")]
        )
    lines: dict[Path_, str] = {}
    issues: list[ConfigIssue] = []
    _collect_lines(node, (), path, lines, issues)
    if issues:
        raise ConfigError(issues)
    return yaml.safe_load(text) or {}, lines


def _collect_lines(
    node: yaml.Node, prefix: Path_, file: Path, lines: dict[Path_, str], issues: list[ConfigIssue]
) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        key = (*prefix, str(key_node.value))
        where = f"{file}:{key_node.start_mark.line + 1}"
        if key in lines:
            issues.append(
                ConfigIssue(".".join(key), f"duplicate key (first at {lines[key]})", where)
            )
        lines[key] = where
        _collect_lines(value_node, key, file, lines, issues)


def parse_override(text: str) -> tuple[Path_, str]:
    """``"trainer.max_steps=10"`` -> ``(("trainer", "max_steps"), "10")``."""
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*", key.strip()):
        raise ConfigError(
            [
                ConfigIssue(
                    "",
                    f"override {text!r} must look like section.key=value "
                    "(for example trainer.max_steps=10)",
                    "command line",
                )
            ]
        )
    return tuple(key.strip().split(".")), value


def _set(tree: dict[str, Any], path: Path_, value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


# ---------------------------------------------------------------------- building
class _Builder:
    def __init__(
        self,
        sources: _Sources,
        manager: PluginManager | None,
        check_components: bool,
        unused_sections: Collection[str] = (),
    ):
        self.sources = sources
        self.manager = manager
        self.check_components = check_components
        self.unused_sections = frozenset(unused_sections)
        self.issues: list[ConfigIssue] = []
        self.warnings: list[str] = []

    def issue(self, path: Path_, message: str) -> None:
        self.issues.append(ConfigIssue(".".join(path), message, self.sources.where(path)))

    def value(self, raw: Any, tp: Any, path: Path_) -> Any:
        if isinstance(raw, _Override):
            raw = parse_text(raw.text, tp)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if not isinstance(raw, Mapping):
                raise TypeMismatch(f"expected a mapping of {tp.__name__} keys, got {raw!r}")
            return self.dataclass(tp, raw, path)
        if isinstance(raw, dict) and any(isinstance(v, _Override) for v in raw.values()):
            raise TypeMismatch(f"expected {tp}, not a mapping")
        return coerce(raw, tp)

    def dataclass(
        self, cls: type, raw: Mapping[str, Any], path: Path_, skip: Sequence[str] = ()
    ) -> Any:
        """An instance of ``cls`` from ``raw``; unknown keys and bad values become issues."""
        types_ = field_types(cls)
        names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("options")]
        kwargs: dict[str, Any] = {}
        ok = True
        for key, raw_value in raw.items():
            if key in skip:
                continue
            if key not in names:
                hint = did_you_mean(str(key), names, prefix=".".join(path) + "." if path else "")
                self.issue((*path, str(key)), f"unknown key{hint}" + _valid_keys(names, hint))
                ok = False
                continue
            try:
                kwargs[key] = self.value(raw_value, types_[key], (*path, key))
            except TypeMismatch as exc:
                self.issue((*path, key), str(exc))
                ok = False
        if not ok:
            return None
        return self.construct(cls, kwargs, path)

    def construct(self, cls: type, kwargs: dict[str, Any], path: Path_) -> Any:
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            self.issue(self._key_in_message(str(exc), cls, path), str(exc))
            return None

    def _key_in_message(self, message: str, cls: type, path: Path_) -> Path_:
        """The field a ``__post_init__`` message talks about, for its file line."""
        for f in dataclasses.fields(cls):
            if re.search(rf"(^|[\s.'\"`]){re.escape(f.name)}\b", message):
                return (*path, f.name)
        return path

    def component_section(self, section: str, cls: type, raw: Mapping[str, Any]) -> Any:
        kind = COMPONENT_SECTIONS[section]
        path = (section,)
        name_raw = raw.get("name", cls().name)
        try:
            name = self.value(name_raw, str, (section, "name"))
        except TypeMismatch as exc:
            self.issue((section, "name"), str(exc))
            return None
        common = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("options")}
        component = self._lookup(kind, name, (section, "name"))
        if component is not None and section == "algorithm":
            component = self._algorithm_parts(component, raw)
        if component is None:
            section_obj = self.dataclass(cls, {k: v for k, v in raw.items() if k in common}, path)
            extra = {k: v for k, v in raw.items() if k not in common}
            if section_obj is not None:
                setattr(section_obj, OPTIONS_FIELD, _plain(extra))
            return section_obj
        option_names = [f.name for f in dataclasses.fields(component.Config)]
        clash = sorted(common & set(option_names))
        if clash:
            self.issue(
                path,
                f"{kind} {name!r} declares options {clash} that clash with the core keys of "
                f"'{section}'; the plugin must rename them",
            )
            return None
        options_raw = {k: v for k, v in raw.items() if k in option_names}
        unknown = [k for k in raw if k not in common and k not in option_names]
        for key in unknown:
            hint = did_you_mean(str(key), [*common, *option_names], prefix=f"{section}.")
            self.issue(
                (section, str(key)),
                f"unknown key for {kind} {name!r}{hint}"
                + _valid_keys([*common, *option_names], hint),
            )
        section_obj = self.dataclass(cls, {k: v for k, v in raw.items() if k in common}, path)
        options = self.dataclass(component.Config, options_raw, path)
        if section_obj is None or options is None or unknown:
            return None
        setattr(section_obj, OPTIONS_FIELD, options)
        return section_obj

    def _algorithm_parts(self, algorithm: Any, raw: Mapping[str, Any]) -> Any:
        """The algorithm with the parts ``algorithm.advantage`` / ``algorithm.loss`` name
        (``lightrft_core.algorithms.parts``), so that their options are checked; ``None``
        when a part is not installed or the algorithm is not built from parts."""
        parts: dict[str, Any] = {}
        for key in ("advantage", "loss"):
            path = ("algorithm", key)
            try:
                name = self.value(raw.get(key), str | None, path)
            except TypeMismatch as exc:
                self.issue(path, str(exc))
                return None
            if name is None:
                continue
            parts[key] = self._lookup(key, name, path)
            if parts[key] is None:
                return None
        if not parts:
            return algorithm
        from ..algorithms.parts import PartsAlgorithm, not_built_from_parts

        if not issubclass(algorithm, PartsAlgorithm):
            self.issue(("algorithm", next(iter(parts))), not_built_from_parts(algorithm.name))
            return None
        return algorithm.with_parts(parts.get("advantage"), parts.get("loss"))

    def _lookup(self, kind: str, name: str, path: Path_) -> Any:
        if self.manager is None:
            self.warnings.append(f"{'.'.join(path)}: {kind} {name!r} not checked (no plugins)")
            return None
        try:
            return self.manager.get_component(kind, name)
        except UnknownComponentError as exc:
            if path[0] in self.unused_sections:  # not needed by this command: no complaint
                return None
            message = str(exc)
            if self.check_components:
                self.issue(path, message)
            else:
                self.warnings.append(f"{'.'.join(path)}: {message}")
            return None


def _valid_keys(names: Sequence[str], hint: str) -> str:
    return "" if hint else f" (valid keys: {', '.join(sorted(names))})"


def _plain(value: Any) -> Any:
    if isinstance(value, _Override):
        return parse_text(value.text, Any)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------- public entry points
def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    manager: PluginManager | None = None,
    check_components: bool = True,
    unused_sections: Collection[str] = (),
) -> LightRFTConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (``a.b=c``).

    Component sections are validated against the selected component's own ``Config``,
    looked up in ``manager`` (after loading the plugins listed in ``run.plugins``). With
    ``check_components=False`` an unknown component is a warning (kept in
    ``config_warnings(cfg)``) and its options stay unchecked. ``unused_sections`` names the
    component sections a command does not use (``lightrft sft`` has no engine, algorithm or
    reward): a component of theirs that is not installed is neither an error nor a warning
    (an installed one is still checked).
    """
    cfg, _ = _load(path, overrides, manager, check_components, unused_sections)
    return cfg


def load_config_with_warnings(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    manager: PluginManager | None = None,
    check_components: bool = True,
) -> tuple[LightRFTConfig, list[str]]:
    """Like ``load_config``, also returning the warnings (unchecked components)."""
    return _load(path, overrides, manager, check_components)


def _load(
    path: str | Path | None,
    overrides: Sequence[str],
    manager: PluginManager | None,
    check_components: bool,
    unused_sections: Collection[str] = (),
) -> tuple[LightRFTConfig, list[str]]:
    raw: dict[str, Any] = {}
    sources = _Sources(file=str(path) if path else None)
    if path is not None:
        raw, sources.keys = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        _set(raw, key, _Override(value))
        sources.keys[key] = f"command line '{text}'"
    builder = _Builder(sources, manager, check_components, unused_sections)
    _load_run_plugins(raw, builder)
    sections: dict[str, Any] = {}
    root_types = field_types(LightRFTConfig)
    known = [f.name for f in dataclasses.fields(LightRFTConfig)]
    for name, value in raw.items():
        if name not in known:
            hint = did_you_mean(str(name), known)
            builder.issue((str(name),), f"unknown section{hint}" + _valid_keys(known, hint))
        elif not isinstance(value, Mapping):
            builder.issue((name,), f"must be a mapping of keys, got {_plain(value)!r}")
    for f in dataclasses.fields(LightRFTConfig):
        section_raw = raw.get(f.name, {})
        if not isinstance(section_raw, Mapping):
            continue
        if f.name in COMPONENT_SECTIONS:
            sections[f.name] = builder.component_section(f.name, root_types[f.name], section_raw)
        else:
            sections[f.name] = builder.dataclass(root_types[f.name], section_raw, (f.name,))
    if not builder.issues:
        cfg = LightRFTConfig(**sections)
        _cross_checks(cfg, builder)
    if builder.issues:
        raise ConfigError(builder.issues)
    return cfg, builder.warnings


def _load_run_plugins(raw: dict[str, Any], builder: _Builder) -> None:
    run = raw.get("run")
    if builder.manager is None or not isinstance(run, Mapping) or "plugins" not in run:
        return
    try:
        names = builder.value(run["plugins"], list[str], ("run", "plugins"))
    except TypeMismatch as exc:
        builder.issue(("run", "plugins"), str(exc))
        return
    from ..plugins import PluginLoadError

    for name in names:
        try:
            builder.manager.load_plugin(name)
        except PluginLoadError as exc:
            builder.issue(("run", "plugins"), str(exc))


def _cross_checks(cfg: LightRFTConfig, builder: _Builder) -> None:
    """Rules that involve two sections."""
    if builder.manager is None:
        return
    from ..algorithms.parts import resolve_algorithm

    section = cfg.algorithm
    try:
        algorithm = resolve_algorithm(
            builder.manager, section.name, section.advantage, section.loss
        )
    except (LookupError, ValueError):  # reported (or warned about) with its section
        return
    if algorithm.requires_groups and cfg.engine.n_samples_per_prompt < 2:
        builder.issue(
            ("engine", "n_samples_per_prompt"),
            f"algorithm {cfg.algorithm.name!r} compares samples within a group of the same "
            f"prompt and needs n_samples_per_prompt >= 2, got {cfg.engine.n_samples_per_prompt}",
        )


# ---------------------------------------------------------------------- output
def config_to_dict(cfg: Any) -> Any:
    """Plain data (YAML-ready); component options are flattened into their section."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.metadata.get("options"):
                if value is not None:
                    out.update(config_to_dict(value))
            else:
                out[f.name] = config_to_dict(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, enum.Enum):
        return cfg.value
    return cfg


def dump_config(cfg: LightRFTConfig) -> str:
    """The configuration as YAML that ``load_config`` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
