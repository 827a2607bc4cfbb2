"""The plugin manager: built-ins, entry points, ``--plugin`` modules and typed lookups.

Nothing outside this module touches ``pluggy`` hooks directly. Entry points of the group
``lightrft`` are imported lazily (the first time a plugin list or a component is needed)
and once. A plugin that fails to import, or whose registration hook raises, is reported and
skipped -- unless the run names it explicitly (``--plugin``, ``run.plugins``): then any
failure is fatal.

Environment:

* ``LIGHTRFT_DISABLE_PLUGIN_AUTOLOAD=1`` -- load no entry point unless named by ``--plugin``;
* ``LIGHTRFT_LOAD_PLUGINS=a,b`` -- load only these entry points (names or distributions);
* ``LIGHTRFT_TRACE_PLUGINS=1`` -- print every plugin load and hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._version import __version__
from .registry import (
    FIRST_PARTY_COMPONENTS,
    REGISTRATION_HOOKS,
    ComponentInfo,
    ComponentRegistry,
    Register,
    UnknownComponentError,
    unknown_component_message,
)

if TYPE_CHECKING:
    import typer

    from .interfaces import (
        Actor,
        Algorithm,
        Component,
        InferenceEngine,
        ModelPatch,
        RewardModel,
        StrategyBase,
        Tracker,
    )

ENTRY_POINT_GROUP = "lightrft"
ENV_DISABLE_PLUGIN_AUTOLOAD = "LIGHTRFT_DISABLE_PLUGIN_AUTOLOAD"
ENV_LOAD_PLUGINS = "LIGHTRFT_LOAD_PLUGINS"
ENV_TRACE = "LIGHTRFT_TRACE_PLUGINS"

#: Built-in components are registered through the same hooks as any plugin.
BUILTIN_PLUGINS: dict[str, str] = {"builtins": "lightrft_core.builtins"}

logger = logging.getLogger("lightrft.plugins")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class PluginLoadError(Exception):
    """A plugin could not be found, imported or registered."""


@dataclass
class PluginInfo:
    """What ``lightrft plugins`` shows for one plugin."""

    name: str
    source: str  # "builtin", "entry point", "module", "file" or "object"
    distribution: str | None = None
    version: str | None = None
    status: str = "ok"  # "ok", "broken" or "disabled"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)  # "kind:name"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "hooks": list(self.hooks),
            "components": list(self.components),
        }


def core_requirement(version: str = __version__) -> str:
    """The ``lightrft-core`` range a plugin built against ``version`` declares: the same
    minor series before 1.0 (``>=0.1.0,<0.2``), the same major series after."""
    major, minor = (int(p) for p in version.split(".")[:2])
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"
    return f"lightrft-core>={major}.{minor}.0,<{upper}"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PluginManager:
    """Owns the pluggy manager, the plugin list and the component registry."""

    def __init__(
        self,
        *,
        builtins: bool = True,
        autoload: bool | None = None,
        load_only: Iterable[str] | None = None,
        trace: bool | None = None,
    ) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._registry: ComponentRegistry | None = None
        self._entry_points_loaded = False
        self._explicit: set[str] = set()
        self.autoload = (
            (not _env_flag(ENV_DISABLE_PLUGIN_AUTOLOAD)) if autoload is None else autoload
        )
        if load_only is None and ENV_LOAD_PLUGINS in os.environ:
            load_only = [p for p in os.environ[ENV_LOAD_PLUGINS].split(",") if p.strip()]
        self.load_only = None if load_only is None else {p.strip() for p in load_only}
        self.trace = _env_flag(ENV_TRACE) if trace is None else trace
        if builtins:
            for name, module in BUILTIN_PLUGINS.items():
                self.register(
                    importlib.import_module(module),
                    name=name,
                    source="builtin",
                    distribution="lightrft-core",
                    version=__version__,
                )

    # ------------------------------------------------------------------ registration
    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        source: str = "object",
        distribution: str | None = None,
        version: str | None = None,
        strict: bool = True,
    ) -> PluginInfo:
        """Add a plugin object (usually a module). Unknown ``lightrft_*`` hooks are refused."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if name in self._plugins:
            raise PluginLoadError(f"a plugin named {name!r} is already registered")
        info = PluginInfo(name, source, distribution, version)
        try:
            self._pm.register(plugin, name=name)
            self._check_hook_names(plugin, name)
        except Exception as exc:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            return self._broken(info, exc, strict)
        info.hooks = sorted(h.name for h in self._pm.get_hookcallers(plugin) or [])
        self._plugins[name] = info
        self._trace(f"registered plugin {name!r} ({source}) with hooks {info.hooks}")
        self._registry = None
        return info

    def unregister(self, name: str) -> None:
        """Remove a plugin (tests register a plugin for their duration, then remove it)."""
        if self._pm.get_plugin(name) is not None:
            self._pm.unregister(name=name)
        self._plugins.pop(name, None)
        self._registry = None

    def _check_hook_names(self, plugin: object, name: str) -> None:
        known = {h for h in dir(hookspecs) if h.startswith("lightrft_")}
        for attr in dir(plugin):
            if attr.startswith("lightrft_") and attr not in known:
                if self._pm.parse_hookimpl_opts(plugin, attr) is None:
                    continue
                import difflib

                close = difflib.get_close_matches(attr, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise PluginLoadError(
                    f"plugin {name!r} implements unknown hook {attr!r}{hint} "
                    f"Known hooks: {', '.join(sorted(known))}."
                )

    def _broken(self, info: PluginInfo, exc: BaseException, strict: bool) -> PluginInfo:
        info.status = "broken"
        info.error = _short_error(exc)
        self._plugins[info.name] = info
        where = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
        if strict:
            raise PluginLoadError(f"plugin {info.name!r}{where} failed: {info.error}") from exc
        if info.name not in self._explicit:  # load_plugin raises for those instead
            logger.warning(
                "plugin %r%s failed and was skipped: %s (LIGHTRFT_TRACE_PLUGINS=1 shows the "
                "traceback; 'lightrft plugins' lists broken plugins)",
                info.name,
                where,
                info.error,
            )
        if self.trace:
            self._trace("".join(traceback.format_exception(exc)).rstrip())
        return info

    # ------------------------------------------------------------------ loading
    def load_entry_points(self) -> None:
        """Import the ``lightrft`` entry points (once), honouring the environment controls."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        # Sorted by name: which of two clashing plugins wins must not depend on sys.path.
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self._plugins:
                continue
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            wanted = (
                self.autoload
                if self.load_only is None
                else (ep.name in self.load_only or dist in self.load_only)
            )
            if not wanted:
                self._plugins[ep.name] = PluginInfo(
                    ep.name, "entry point", dist, version, status="disabled"
                )
                continue
            self._load_entry_point(ep, strict=False)
        if self.load_only:
            missing = (
                self.load_only
                - {i.name for i in self._plugins.values() if i.status != "disabled"}
                - {i.distribution for i in self._plugins.values() if i.status != "disabled"}
            )
            for name in sorted(missing):
                logger.warning(
                    "%s names %r, but no such plugin is installed", ENV_LOAD_PLUGINS, name
                )

    def _load_entry_point(self, ep: metadata.EntryPoint, *, strict: bool) -> PluginInfo:
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        self._plugins.pop(ep.name, None)  # a "disabled" placeholder
        self._trace(f"loading entry point {ep.name!r} = {ep.value!r} from {dist}")
        try:
            module = ep.load()
        except Exception as exc:
            info = PluginInfo(ep.name, "entry point", dist, version)
            return self._broken(info, exc, strict)
        return self.register(
            module, ep.name, source="entry point", distribution=dist, version=version, strict=strict
        )

    def load_plugin(self, spec: str) -> PluginInfo:
        """Load a plugin a run names (``--plugin X``, ``run.plugins``).

        ``spec`` is tried as an entry-point name, then as an importable module, then as a path
        to a ``.py`` file. Every failure -- not found, an import error, or a registration hook
        that raises (a duplicate name, an invalid class) -- raises ``PluginLoadError``.
        """
        self._explicit.add(spec)
        info = self._plugins.get(spec)
        if info is None or info.status == "disabled":
            info = self._find_and_register(spec)
        self.registry  # noqa: B018 - runs the plugin's registration hooks now
        if info.status != "ok":
            raise PluginLoadError(f"plugin {spec!r} cannot be used: {info.error}")
        return info

    def _find_and_register(self, spec: str) -> PluginInfo:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == spec:
                return self._load_entry_point(ep, strict=True)
        if _MODULE_NAME.fullmatch(spec) and not spec.endswith(".py"):
            try:
                module = importlib.import_module(spec)
            except ModuleNotFoundError as exc:
                if exc.name != spec and not spec.startswith(f"{exc.name}."):
                    raise PluginLoadError(  # the module exists; one of its imports does not
                        f"plugin {spec!r} failed to import: {_short_error(exc)}"
                    ) from exc
            except Exception as exc:
                raise PluginLoadError(
                    f"plugin {spec!r} failed to import: {_short_error(exc)}"
                ) from exc
            else:
                dist, version = _distribution_of(module)
                return self.register(
                    module, spec, source="module", distribution=dist, version=version
                )
        path = Path(spec)
        if path.suffix == ".py" and path.is_file():
            return self.register(_import_file(path), spec, source="file")
        if path.suffix == ".py" or os.sep in spec:
            raise PluginLoadError(f"plugin {spec!r}: no file at {path.resolve()}")
        installed = sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
        raise PluginLoadError(
            f"plugin {spec!r} not found: it is not an installed entry point "
            f"(installed: {', '.join(installed) or 'none'}), not an importable module, and "
            f"not a path to an existing .py file. Install it (pip install "
            f"lightrft-plugin-{spec}) or give a module name or a file path."
        )

    # ------------------------------------------------------------------ registry
    @property
    def registry(self) -> ComponentRegistry:
        """The registry, built on first use by calling every registration hook."""
        self.load_entry_points()
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> ComponentRegistry:
        """Call each plugin's registration hooks, plugin by plugin in loading order.

        A plugin's components reach the registry only if all its hooks succeed: a plugin that
        fails for one kind is broken as a whole, never half registered.
        """
        registry = ComponentRegistry()
        impls: dict[str, list[tuple[str, str, Any]]] = {}
        for kind, hook_name in REGISTRATION_HOOKS.items():
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                impls.setdefault(impl.plugin_name, []).append((kind, hook_name, impl))
        for name, info in self._plugins.items():
            info.components = []
            if info.status != "ok":
                continue
            registers: list[Register[Any]] = []
            try:
                for kind, hook_name, impl in impls.get(name, []):
                    register: Register[Any] = Register(kind, registry, name)
                    self._call_impl(impl, hook_name, {"register": register})
                    registers.append(register)
            except Exception as exc:
                self._broken(info, exc, strict=False)
                continue
            for register in registers:
                info.components += [f"{c.kind}:{c.name}" for c in register.commit()]
        return registry

    def _call_impl(self, impl: Any, hook_name: str, kwargs: dict[str, Any]) -> Any:
        self._trace(f"calling {hook_name} of plugin {impl.plugin_name!r}")
        result = impl.function(**{k: kwargs[k] for k in impl.argnames})
        if isinstance(kwargs.get("register"), Register) and self.trace:
            staged = [i.name for i in kwargs["register"].staged]
            kind = kwargs["register"].kind
            self._trace(f"  {impl.plugin_name!r} registered {kind} components {staged}")
        return result

    def _trace(self, message: str) -> None:
        if self.trace:
            print(f"[lightrft plugins] {message}", file=sys.stderr)

    def plugins(self) -> list[PluginInfo]:
        """Every known plugin (loaded, broken or disabled), built-ins first."""
        self.registry  # noqa: B018 - loads entry points and fills the component lists
        return list(self._plugins.values())

    def add_cli_commands(self, app: typer.Typer) -> None:
        """Let every loaded plugin add its commands to the CLI."""
        self.load_entry_points()
        for impl in self._pm.hook.lightrft_add_cli_commands.get_hookimpls():
            try:
                self._call_impl(impl, "lightrft_add_cli_commands", {"app": app})
            except Exception as exc:
                self._broken(self._plugins[impl.plugin_name], exc, strict=False)

    # ------------------------------------------------------------------ typed lookups
    def get_component(self, kind: str, name: str) -> type[Component]:
        return self.component_info(kind, name).cls

    def component_info(self, kind: str, name: str) -> ComponentInfo:
        """The component ``name`` of ``kind``; ``UnknownComponentError`` says what to do."""
        info = self.registry.find(kind, name)
        if info is None:
            raise UnknownComponentError(self.unknown_component_message(kind, name))
        return info

    def unknown_component_message(self, kind: str, name: str) -> str:
        """Why ``name`` is missing: for a first-party name, the distribution to install, or
        why the installed one gave nothing (its plugin disabled, broken or too old)."""
        dist = FIRST_PARTY_COMPONENTS.get((kind, name))
        plugin = next((p for p in self._plugins.values() if dist and p.distribution == dist), None)
        return unknown_component_message(
            kind, name, self.registry.names(kind), not_loaded=self._not_loaded_reason(plugin)
        )

    def _not_loaded_reason(self, plugin: PluginInfo | None) -> str | None:
        if plugin is None:
            return None
        if plugin.status == "broken":
            return f"its plugin {plugin.name!r} failed to load: {plugin.error}"
        if plugin.status == "disabled":
            switch = ENV_LOAD_PLUGINS if self.load_only is not None else ENV_DISABLE_PLUGIN_AUTOLOAD
            return f"its plugin {plugin.name!r} is off ({switch}); --plugin {plugin.name} loads it"
        return (
            f"version {plugin.version} of its plugin {plugin.name!r} does not register it "
            f"(pip install -U {plugin.distribution})"
        )

    def get_strategy(self, name: str) -> type[StrategyBase]:
        return self.get_component("strategy", name)  # type: ignore[return-value]

    def get_actor(self, name: str) -> type[Actor]:
        return self.get_component("actor", name)  # type: ignore[return-value]

    def get_reward_model(self, name: str) -> type[RewardModel]:
        return self.get_component("reward", name)  # type: ignore[return-value]

    def get_engine(self, name: str) -> type[InferenceEngine]:
        return self.get_component("engine", name)  # type: ignore[return-value]

    def get_algorithm(self, name: str) -> type[Algorithm]:
        return self.get_component("algorithm", name)  # type: ignore[return-value]

    def get_patch(self, name: str) -> type[ModelPatch]:
        return self.get_component("patch", name)  # type: ignore[return-value]

    def get_tracker(self, name: str) -> type[Tracker]:
        return self.get_component("tracker", name)  # type: ignore[return-value]


def _import_file(path: Path) -> ModuleType:
    module_name = f"lightrft_local_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginLoadError(f"plugin file {path} failed to import: {_short_error(exc)}") from exc
    return module


def _distribution_of(module: ModuleType) -> tuple[str | None, str | None]:
    top = module.__name__.split(".")[0]
    dists = metadata.packages_distributions().get(top) or []
    if not dists:
        return None, None
    return dists[0], metadata.version(dists[0])


# ---------------------------------------------------------------------- process-wide manager
_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager (created on first use)."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Replace the process-wide manager (tests use a fresh one each)."""
    global _manager
    _manager = manager


def _lookup(kind: str) -> Callable[[str], Any]:
    def lookup(name: str) -> Any:
        return get_plugin_manager().get_component(kind, name)

    lookup.__name__ = f"get_{kind}"
    lookup.__doc__ = f"The registered {kind} class called ``name`` (process-wide manager)."
    return lookup


get_strategy: Callable[[str], type[StrategyBase]] = _lookup("strategy")
get_actor: Callable[[str], type[Actor]] = _lookup("actor")
get_reward_model: Callable[[str], type[RewardModel]] = _lookup("reward")
get_engine: Callable[[str], type[InferenceEngine]] = _lookup("engine")
get_algorithm: Callable[[str], type[Algorithm]] = _lookup("algorithm")
get_patch: Callable[[str], type[ModelPatch]] = _lookup("patch")
get_tracker: Callable[[str], type[Tracker]] = _lookup("tracker")
