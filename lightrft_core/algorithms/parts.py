"""Algorithms built from parts: an advantage estimator, a policy loss and default options.

``preset(name, advantage=..., loss=..., defaults=...)`` returns a registrable ``Algorithm``
subclass (a ``PartsAlgorithm``) whose ``Config`` merges the two parts' ``Config`` fields --
estimator first, a field both declare (the KL options) once -- with the preset's defaults.
Register it with ``lightrft_register_algorithms`` like any algorithm::

    GRPO = preset("grpo", advantage=GroupNormalizedEstimator, loss=ClippedPolicyLoss,
                  defaults={"kl_estimator": "k3", "kl_mode": "loss"}, module=__name__)

Variants that only change defaults are presets of the same parts, never subclasses.

``algorithm.advantage`` / ``algorithm.loss`` replace a preset's part from the configuration
(``resolve_algorithm``): the algorithm is then ``Preset.with_parts(estimator, loss)``, whose
``Config`` merges the chosen parts' fields and keeps the preset's defaults for the fields it
still has. Each part is built from its own fields of the merged ``Config`` (its
``__post_init__`` checks them, so a bad value is reported with its key and file line).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..interfaces import (
    AdvantageEstimator,
    AdvantageInput,
    AdvantageOutput,
    Algorithm,
    AlgorithmContext,
    Component,
    PolicyLoss,
    PolicyLossInput,
    PolicyLossOutput,
)
from .clipped_loss import KLOptions

if TYPE_CHECKING:
    from ..plugins import PluginManager


class KLShapedEstimator(AdvantageEstimator):
    """An estimator whose ``Config`` extends ``KLOptions``: it owns the KL with
    ``kl_mode: reward`` (the loss owns ``kl_mode: loss``)."""

    config: KLOptions

    def initial_kl_coef(self) -> float:
        return self.config.kl_coef

    def needs_reference(self) -> bool:
        return self.config.kl_in_reward


def part_config(config_cls: type, values: Any) -> Any:
    """An instance of ``config_cls`` from the same-named fields of the dataclass ``values``
    (fields ``values`` lacks keep their defaults)."""
    given = {f.name for f in dataclasses.fields(values)}
    return config_cls(
        **{
            f.name: getattr(values, f.name)
            for f in dataclasses.fields(config_cls)
            if f.name in given
        }
    )


def _field_names(config_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_cls)}


def _check_kl_owner(values: Any, estimator: type[Component], loss: type[Component]) -> None:
    """A KL term that is on must have a part that applies it."""
    names = _field_names(type(values))
    if "kl_coef" not in names or "kl_mode" not in names or values.kl_coef <= 0.0:
        return
    owner = estimator if values.kl_mode == "reward" else loss
    if "kl_coef" not in _field_names(owner.Config):
        raise ValueError(
            f"kl_mode {values.kl_mode!r} with kl_coef > 0 needs a {owner.kind} part that "
            f"applies the KL, and {owner.kind} {owner.name!r} has no KL option; use the other "
            "kl_mode or kl_coef: 0"
        )


def merged_config(
    class_name: str,
    estimator: type[AdvantageEstimator],
    loss: type[PolicyLoss],
    defaults: Mapping[str, Any],
    module: str,
) -> type:
    """The ``Config`` dataclass of an algorithm made of ``estimator`` and ``loss`` (module
    docstring). A field both parts declare must have one type; ``defaults`` must name
    fields of the parts."""
    fields: dict[str, tuple[dataclasses.Field[Any], Any]] = {}
    for part in (estimator, loss):
        hints = typing.get_type_hints(part.Config)
        for f in dataclasses.fields(part.Config):
            if f.name in fields and fields[f.name][1] != hints[f.name]:
                raise TypeError(
                    f"{class_name}: option {f.name!r} has type {fields[f.name][1]} in "
                    f"{estimator.kind} {estimator.name!r} and {hints[f.name]} in {loss.kind} "
                    f"{loss.name!r}; parts that share an option must declare it alike"
                )
            fields.setdefault(f.name, (f, hints[f.name]))
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise TypeError(f"{class_name}: defaults for options the parts do not have: {unknown}")
    spec = []
    for name, (f, tp) in fields.items():
        if name in defaults:
            new = dataclasses.field(default=defaults[name], metadata=f.metadata)
        elif f.default is not dataclasses.MISSING:
            new = dataclasses.field(default=f.default, metadata=f.metadata)
        else:
            new = dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
        spec.append((name, tp, new))

    def __post_init__(self: Any) -> None:
        part_config(estimator.Config, self)  # each part checks its own options
        part_config(loss.Config, self)
        _check_kl_owner(self, estimator, loss)

    return dataclasses.make_dataclass(
        f"{class_name}Config",
        spec,
        namespace={
            "__post_init__": __post_init__,
            "__doc__": f"Options of {estimator.kind} {estimator.name!r} and {loss.kind} "
            f"{loss.name!r}.",
            "__module__": module,
        },
    )


class PartsAlgorithm(Algorithm):
    """An ``Algorithm`` made of an advantage estimator and a policy loss (a preset)."""

    estimator_cls: ClassVar[type[AdvantageEstimator]]
    loss_cls: ClassVar[type[PolicyLoss]]
    #: The preset's defaults, kept when ``with_parts`` swaps a part.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.estimator = self.estimator_cls(
            part_config(self.estimator_cls.Config, self.config), label=self.name
        )
        self.loss = self.loss_cls(part_config(self.loss_cls.Config, self.config), label=self.name)

    @classmethod
    def with_parts(
        cls,
        advantage: type[AdvantageEstimator] | None = None,
        loss: type[PolicyLoss] | None = None,
    ) -> type[PartsAlgorithm]:
        """This preset with its estimator and/or loss replaced (the same class for the same
        parts); the preset's defaults apply to the fields the new parts still have."""
        return _mixed(cls, advantage or cls.estimator_cls, loss or cls.loss_cls)

    def setup(self, context: AlgorithmContext) -> None:
        super().setup(context)
        self.estimator.setup(context)
        self.loss.setup(context)

    def initial_kl_coef(self) -> float | None:
        estimator = self.estimator.initial_kl_coef()
        return estimator if estimator is not None else self.loss.initial_kl_coef()

    def needs_reference(self) -> bool:
        return self.estimator.needs_reference() or self.loss.needs_reference()

    def advantages_use_old_log_probs(self) -> bool:
        return self.estimator.uses_old_log_probs()

    @property
    def max_resample_rounds(self) -> int:
        return self.estimator.max_resample_rounds

    @torch.no_grad()
    def compute_advantages(self, batch: AdvantageInput) -> AdvantageOutput:
        return self.estimator(batch)

    def policy_loss(self, batch: PolicyLossInput) -> PolicyLossOutput:
        return self.loss(batch)


def _estimator_filter_groups(
    self: PartsAlgorithm, rewards: torch.Tensor, group_size: int
) -> torch.Tensor:
    """``filter_groups`` of a preset whose estimator filters groups (dynamic sampling); a
    preset whose estimator keeps every group keeps ``Algorithm.filter_groups``, so the loop
    sees that it never drops a group."""
    return self.estimator.filter_groups(rewards, group_size)


def _class_name(name: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[^a-z0-9]+", name) if p)


def preset(
    name: str,
    *,
    advantage: type[AdvantageEstimator],
    loss: type[PolicyLoss],
    defaults: Mapping[str, Any] | None = None,
    doc: str = "",
    module: str = __name__,
    class_name: str | None = None,
) -> type[PartsAlgorithm]:
    """A registrable algorithm ``name`` made of ``advantage`` and ``loss`` with ``defaults``
    for their options (module docstring). ``module``: the caller's ``__name__``, so that
    ``lightrft plugins`` names where the preset is defined."""
    class_name = class_name or _class_name(name)
    defaults = dict(defaults or {})
    namespace = {
        "name": name,
        "estimator_cls": advantage,
        "loss_cls": loss,
        "defaults": defaults,
        "requires_groups": advantage.requires_groups,
        "Config": merged_config(class_name, advantage, loss, defaults, module),
        "__doc__": doc or f"{advantage.name} advantages with the {loss.name} policy loss.",
        "__module__": module,
        "__qualname__": class_name,
    }
    if advantage.filter_groups is not AdvantageEstimator.filter_groups:
        namespace["filter_groups"] = _estimator_filter_groups
    return type(class_name, (PartsAlgorithm,), namespace)


@functools.cache
def _mixed(
    base: type[PartsAlgorithm], advantage: type[AdvantageEstimator], loss: type[PolicyLoss]
) -> type[PartsAlgorithm]:
    if advantage is base.estimator_cls and loss is base.loss_cls:
        return base
    fields = _field_names(advantage.Config) | _field_names(loss.Config)
    defaults = {k: v for k, v in base.defaults.items() if k in fields}
    return preset(
        base.name,
        advantage=advantage,
        loss=loss,
        defaults=defaults,
        doc=f"{base.name} with the parts {advantage.name!r} and {loss.name!r}.",
        module=base.__module__,
        class_name=f"{base.__qualname__}_{_class_name(advantage.name)}_{_class_name(loss.name)}",
    )


def not_built_from_parts(name: str) -> str:
    """The error for ``algorithm.advantage`` / ``algorithm.loss`` with an algorithm that is
    not a preset."""
    return (
        f"algorithm {name!r} is not built from parts (an advantage estimator and a policy "
        "loss), so algorithm.advantage and algorithm.loss do not apply to it; leave them null "
        "or choose an algorithm built from parts, such as grpo, rloo or reinforce_pp"
    )


def resolve_algorithm(
    manager: PluginManager, name: str, advantage: str | None = None, loss: str | None = None
) -> type[Algorithm]:
    """The algorithm class of ``algorithm.name``, with ``algorithm.advantage`` /
    ``algorithm.loss`` swapped in when set. ``ValueError`` for an algorithm that is not built
    from parts; ``UnknownComponentError`` for an unknown name."""
    cls = manager.get_algorithm(name)
    if advantage is None and loss is None:
        return cls
    if not issubclass(cls, PartsAlgorithm):
        raise ValueError(not_built_from_parts(name))
    estimator_cls = manager.get_component("advantage", advantage) if advantage else None
    loss_cls = manager.get_component("loss", loss) if loss else None
    return cls.with_parts(estimator_cls, loss_cls)  # type: ignore[arg-type]
