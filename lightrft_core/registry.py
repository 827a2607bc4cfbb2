"""The component registry and the typed ``register`` object that hooks receive."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .interfaces import COMPONENT_KINDS, Component, component_class_problems

T = TypeVar("T", bound=Component)

#: The registration hook of each component kind.
REGISTRATION_HOOKS: dict[str, str] = {
    "strategy": "lightrft_register_strategies",
    "actor": "lightrft_register_actors",
    "reward": "lightrft_register_reward_models",
    "engine": "lightrft_register_engines",
    "algorithm": "lightrft_register_algorithms",
    "advantage": "lightrft_register_advantage_estimators",
    "loss": "lightrft_register_policy_losses",
    "patch": "lightrft_register_patches",
    "tracker": "lightrft_register_trackers",
}


#: The distribution that provides each first-party component, by ``(kind, name)``: what an
#: error tells a user to install. One line per name; ``tests/test_first_party_components.py``
#: checks the table against what the first-party plugins register.
FIRST_PARTY_COMPONENTS: dict[tuple[str, str], str] = {
    ("algorithm", "grpo"): "lightrft-plugin-grpo",
    ("algorithm", "dr_grpo"): "lightrft-plugin-grpo",
    ("algorithm", "dapo"): "lightrft-plugin-grpo",
    ("algorithm", "gspo"): "lightrft-plugin-grpo",
    ("algorithm", "gspo_token"): "lightrft-plugin-grpo",
    ("algorithm", "gmpo"): "lightrft-plugin-grpo",
    ("algorithm", "reinforce_pp"): "lightrft-plugin-reinforce",
    ("algorithm", "reinforce_pp_baseline"): "lightrft-plugin-reinforce",
    ("algorithm", "rloo"): "lightrft-plugin-reinforce",
    ("algorithm", "cpgd"): "lightrft-plugin-cpgd",
    ("algorithm", "ppo"): "lightrft-plugin-ppo",
    ("advantage", "grpo"): "lightrft-plugin-grpo",
    ("advantage", "dapo"): "lightrft-plugin-grpo",
    ("advantage", "reinforce_pp"): "lightrft-plugin-reinforce",
    ("advantage", "reinforce_pp_baseline"): "lightrft-plugin-reinforce",
    ("advantage", "rloo"): "lightrft-plugin-reinforce",
    ("loss", "gspo"): "lightrft-plugin-grpo",
    ("loss", "gspo_token"): "lightrft-plugin-grpo",
    ("loss", "gmpo"): "lightrft-plugin-grpo",
    ("strategy", "fsdp"): "lightrft-plugin-fsdp",
    ("strategy", "deepspeed"): "lightrft-plugin-deepspeed",
    ("engine", "vllm"): "lightrft-plugin-vllm",
    ("engine", "sglang"): "lightrft-plugin-sglang",
    ("actor", "qwen_vl"): "lightrft-plugin-qwen-vl",
    ("actor", "qwen_audio"): "lightrft-plugin-qwen-audio",
    ("actor", "qwen_omni"): "lightrft-plugin-qwen-audio",
    ("patch", "qwen2_audio_position_embedding"): "lightrft-plugin-qwen-audio",
    ("patch", "ulysses_attention"): "lightrft-plugin-patches",
    ("tracker", "wandb"): "lightrft-plugin-wandb",
    ("tracker", "mlflow"): "lightrft-plugin-mlflow",
}


class RegistrationError(Exception):
    """A plugin tried to register something that is not a valid component."""


class DuplicateComponentError(RegistrationError):
    """Two plugins registered the same name for the same component kind."""


class UnknownComponentError(LookupError):
    """A configuration or lookup named a component that no loaded plugin provides."""


@dataclass(frozen=True)
class ComponentInfo:
    """A registered component: its kind, name, class and the plugin that registered it."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str

    @property
    def qualname(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


class ComponentRegistry:
    """All registered components, by kind and name."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, ComponentInfo]] = {k: {} for k in COMPONENT_KINDS}

    def add(self, info: ComponentInfo) -> None:
        existing = self._by_kind[info.kind].get(info.name)
        if existing is not None:
            raise DuplicateComponentError(duplicate_message(existing, info))
        self._by_kind[info.kind][info.name] = info

    def find(self, kind: str, name: str) -> ComponentInfo | None:
        return self._by_kind[kind].get(name)

    def get(self, kind: str, name: str) -> ComponentInfo:
        """The component ``name`` of ``kind``; ``UnknownComponentError`` says what exists."""
        info = self.find(kind, name)
        if info is None:
            raise UnknownComponentError(unknown_component_message(kind, name, self.names(kind)))
        return info

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def __iter__(self) -> Iterator[ComponentInfo]:
        for kind in COMPONENT_KINDS:
            yield from (self._by_kind[kind][n] for n in sorted(self._by_kind[kind]))


def duplicate_message(first: ComponentInfo, second: ComponentInfo) -> str:
    return (
        f"{first.kind} name {first.name!r} is registered twice: by plugin {first.plugin!r} "
        f"({first.qualname}) and by plugin {second.plugin!r} ({second.qualname}). "
        f"Uninstall one of the two, or choose which plugins load with LIGHTRFT_LOAD_PLUGINS."
    )


def unknown_component_message(
    kind: str, name: str, available: list[str], *, not_loaded: str | None = None
) -> str:
    """What a user reads when ``name`` is missing: for a first-party name, the distribution
    to install, or -- ``not_loaded`` -- why that installed distribution gave nothing;
    otherwise the closest available name. Always the names that are available."""
    dist = FIRST_PARTY_COMPONENTS.get((kind, name))
    if dist is not None and not_loaded is not None:
        msg = f"no {kind} named {name!r} is loaded: {dist} provides it and is installed, but "
        msg += f"{not_loaded}."
    elif dist is not None:
        msg = f"no {kind} named {name!r} is installed: it comes with {dist} (pip install {dist})."
    else:
        msg = f"no {kind} named {name!r} is installed"
        close = difflib.get_close_matches(name, available, n=1)
        msg += f"; did you mean {close[0]!r}?" if close else "."
    msg += f" Available {kind} names: {', '.join(available) or '(none)'}."
    msg += " 'lightrft plugins' lists what each installed plugin provides."
    return msg


class Register(Generic[T]):
    """The callable a registration hook receives: ``register(MyComponentClass)``.

    Checks that the class implements the interface of its kind, records which plugin
    registered it, and refuses a name that is already taken (naming both plugins).
    Registrations are staged and only reach the registry when the whole hook succeeded.
    """

    def __init__(self, kind: str, registry: ComponentRegistry, plugin: str) -> None:
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"unknown component kind {kind!r}")
        self.kind = kind
        self.base: type[Component] = COMPONENT_KINDS[kind]
        self.plugin = plugin
        self._registry = registry
        self.staged: list[ComponentInfo] = []

    def __call__(self, cls: type[T]) -> type[T]:
        problems = component_class_problems(cls, self.base)
        if problems:
            raise RegistrationError(
                f"plugin {self.plugin!r} cannot register {cls!r} as a {self.kind} component: "
                + "; ".join(problems)
            )
        info = ComponentInfo(self.kind, cls.name, cls, self.plugin)
        for other in [self._registry.find(self.kind, cls.name), *self.staged]:
            if other is not None and other.name == info.name:
                raise DuplicateComponentError(duplicate_message(other, info))
        self.staged.append(info)
        return cls

    def commit(self) -> list[ComponentInfo]:
        for info in self.staged:
            self._registry.add(info)
        return list(self.staged)
