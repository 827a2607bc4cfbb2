"""What every registrable component has in common: a ``name`` and a typed ``Config``.

A component class (strategy, actor, reward model, engine, algorithm, patch) declares

* ``name`` -- its registry key, the value users write in ``strategy.name: ...``;
* ``Config`` -- a nested dataclass of its own options. Every field has a default and a
  ``metadata={"help": ...}`` text; ``__post_init__`` may raise ``ValueError`` to refuse a
  bad value, and the configuration loader reports it with the key and the file line.

The component is constructed as ``cls(config)`` with an instance of its ``Config``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from abc import ABC
from dataclasses import dataclass
from typing import Any, ClassVar

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.\-]*$")


@dataclass
class EmptyConfig:
    """The options of a component that has none."""


class Component(ABC):  # noqa: B024 - abstract methods live in each interface
    """Base of every registrable component class."""

    #: Which interface this is ("strategy", "actor", ...); set once by each interface base.
    kind: ClassVar[str] = ""
    #: The registry key; lower case, e.g. ``"grpo"``.
    name: ClassVar[str] = ""
    #: The component's own options (a dataclass). ``EmptyConfig`` when it has none.
    Config: ClassVar[type] = EmptyConfig

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else type(self).Config()


def component_class_problems(cls: Any, base: type[Component]) -> list[str]:
    """Why ``cls`` cannot be registered as a ``base`` component (empty list if it can)."""
    if not inspect.isclass(cls):
        return [f"{cls!r} is not a class"]
    problems: list[str] = []
    if not issubclass(cls, base):
        return [f"{cls.__qualname__} does not subclass {base.__module__}.{base.__qualname__}"]
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        problems.append(f"{cls.__qualname__} leaves abstract methods unimplemented: {abstract}")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.append(
            f"{cls.__qualname__}.name must be a lower-case string such as 'my_algo', got {name!r}"
        )
    config_cls = getattr(cls, "Config", None)
    if not (inspect.isclass(config_cls) and dataclasses.is_dataclass(config_cls)):
        problems.append(f"{cls.__qualname__}.Config must be a dataclass, got {config_cls!r}")
    else:
        for f in dataclasses.fields(config_cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(
                    f"{cls.__qualname__}.Config.{f.name} has no default; every option needs one"
                )
    return problems
