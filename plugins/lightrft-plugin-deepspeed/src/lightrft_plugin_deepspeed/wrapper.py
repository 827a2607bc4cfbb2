"""What ``DeepSpeedStrategy.prepare`` returns: the user's module behind a DeepSpeed engine.

DeepSpeed finds the tensors a model returns by walking tuples, lists and dicts; an actor
returns a dataclass (``ActorOutput``), whose tensors DeepSpeed would not see -- and the
backward hooks ZeRO needs are placed on those tensors. So ``DictOutputs`` makes the
module's ``forward`` (an attribute of that one instance) return the dataclass's fields as
a dict, and ``DeepSpeedModel`` builds the dataclass again for the caller. Everything else
the loop reads from the model is the user's module's (``strategy.unwrap`` gives it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


class DictOutputs:
    """Makes ``module.forward`` return a dataclass result as a dict of its fields, and
    turns such a dict back into the dataclass (``restore``)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.output_type: type | None = None
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if dataclasses.is_dataclass(out) and not isinstance(out, type):
                self.output_type = type(out)
                return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
            self.output_type = None
            return out

        module.forward = forward

    def restore(self, out: Any) -> Any:
        """The result the module's own ``forward`` returned."""
        if self.output_type is None:
            return out
        return self.output_type(**out)


class DeepSpeedModel(torch.nn.Module):
    """A prepared model: calls go through the DeepSpeed engine (ZeRO hooks, gathering);
    attributes it does not define are the user's module's."""

    def __init__(self, engine: Any, outputs: DictOutputs) -> None:
        super().__init__()
        self.engine = engine
        self._outputs = outputs

    @property
    def module(self) -> torch.nn.Module:
        """The user's module (what ``strategy.unwrap`` returns)."""
        return self.engine.module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._outputs.restore(self.engine(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("engine", "module", "_outputs", "_modules", "_parameters", "_buffers"):
                raise  # not set up (yet): never recurse through ``self.module``
            return getattr(self.module, name)
