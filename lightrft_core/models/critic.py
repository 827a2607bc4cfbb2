"""The critic's model: a transformers decoder trunk plus a linear value head, one value per
token. The RL loop builds, trains and saves it (``lightrft_core/trainer/critic.py``).

Alignment (the same as the actor's log-probs, ``lightrft_core/interfaces/actor.py``): for
``sequences`` ``[B, T]`` the critic returns ``values`` ``[B, T-1]`` where ``values[:, t]`` is
read from the trunk's hidden state at position ``t``, i.e. it is the value of the state
``sequences[:, : t + 1]`` -- the state *before* the action ``sequences[:, t + 1]`` whose
log-prob is ``log_probs[:, t]``. The trunk is causal, so ``values[:, t]`` depends only on
tokens ``≤ t``. Positions where either token is padding are 0, as for the log-probs.

A critic folder (``save_pretrained``) holds the trunk as a transformers base model (its
``config.json`` and weights, reloadable with ``AutoModel``), ``value_head.safetensors`` and
``critic.json`` (the head's shape). ``CriticModel.from_pretrained`` loads such a folder, or a
causal LM folder (the actor's checkpoint: the trunk is taken, a new head is made).

The trunk is the one of an actor class's architecture: the actor class says how to load it
(``Actor.load_trunk``), how rows are fed to it (``Actor.trunk_inputs``) and how its hidden
states are read (``Actor.trunk_hidden_states``); the base ``Actor``'s defaults are a text
model's (``AutoModel``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..actors.options import CHECKPOINT_KWARGS
from ..interfaces.actor import Actor, text_trunk_inputs

HEAD_FILE = "value_head.safetensors"
CRITIC_FILE = "critic.json"


class ValueHead(torch.nn.Module):
    """``Linear(hidden, 1)`` in float32: hidden states ``[..., H]`` -> values ``[...]``.

    ``init_std = 0`` zero-initialises weight and bias (every value starts at 0); otherwise
    the weight is drawn from ``N(0, init_std²)`` and the bias is 0.
    """

    def __init__(self, hidden_size: int, *, init_std: float = 0.0) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        if init_std < 0.0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.linear = torch.nn.Linear(hidden_size, 1, dtype=torch.float32)
        with torch.no_grad():
            if init_std == 0.0:
                self.linear.weight.zero_()
            else:
                self.linear.weight.normal_(0.0, init_std)
            self.linear.bias.zero_()

    @property
    def hidden_size(self) -> int:
        return self.linear.in_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()

    def save_pretrained(
        self, path: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write ``value_head.safetensors`` and ``critic.json`` into ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, path / HEAD_FILE)
        (path / CRITIC_FILE).write_text(
            json.dumps({"hidden_size": self.hidden_size, "head_file": HEAD_FILE}, indent=2) + "\n",
            encoding="utf-8",
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ValueHead:
        """The head ``save_pretrained`` wrote into ``path``."""
        from safetensors.torch import load_file

        path = Path(path)
        if not is_critic_folder(path):
            raise FileNotFoundError(
                f"{path} holds no value head ({CRITIC_FILE} and {HEAD_FILE} are written by "
                "CriticModel.save_pretrained / ValueHead.save_pretrained)"
            )
        meta = json.loads((path / CRITIC_FILE).read_text(encoding="utf-8"))
        head = cls(int(meta["hidden_size"]))
        head.load_state_dict(load_file(path / HEAD_FILE))
        return head


def is_critic_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a value head (``ValueHead.save_pretrained``)."""
    return (Path(path) / CRITIC_FILE).is_file() and (Path(path) / HEAD_FILE).is_file()


def hidden_size_of(trunk: Any) -> int:
    """The hidden size of a transformers model (its text config for multimodal ones)."""
    return int(trunk.config.get_text_config().hidden_size)


@dataclass(frozen=True)
class TrunkOptions:
    """How a separate critic's trunk is loaded: as the actor's model was (the loop reads
    these from the actor's Hugging Face model, ``trunk_options_of``)."""

    dtype: torch.dtype | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False


def trunk_options_of(hf_model: Any) -> TrunkOptions:
    """The ``TrunkOptions`` of a loaded transformers model (the actor's): its parameter
    dtype, attention kernel, gradient checkpointing, and whether its code came from the
    checkpoint (``trust_remote_code``: its config class lives in ``transformers_modules``)."""
    config = hf_model.config
    return TrunkOptions(
        dtype=hf_model.dtype,
        attn_implementation=config._attn_implementation,
        trust_remote_code=type(config).__module__.startswith("transformers_modules"),
        gradient_checkpointing=bool(hf_model.is_gradient_checkpointing),
    )


class CriticModel(torch.nn.Module):
    """``trunk`` (a transformers decoder) + ``value_head``: ``forward -> values [B, T-1]``.

    The trunk may be the actor's own (the ``shared`` layout, ``Actor.trunk``):
    ``trunk_gradients=False`` in ``forward`` then keeps the value loss from reaching it.
    ``actor_class``: the architecture whose trunk this is; its ``trunk_hidden_states``
    reads the trunk (the base ``Actor``: a text model's ``last_hidden_state``).
    """

    def __init__(
        self,
        trunk: Any,
        value_head: ValueHead | None = None,
        *,
        actor_class: type[Actor] = Actor,
    ) -> None:
        super().__init__()
        hidden = hidden_size_of(trunk)
        head = value_head if value_head is not None else ValueHead(hidden)
        if head.hidden_size != hidden:
            raise ValueError(
                f"the value head expects hidden size {head.hidden_size}, the trunk has {hidden}"
            )
        self.trunk: Any = trunk  # a transformers base model
        self.value_head = head
        self.actor_class = actor_class

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        trunk_inputs: Callable[[Any], Mapping[str, Any]] | None = None,
        trunk_gradients: bool = True,
        last_token: bool = False,
    ) -> torch.Tensor:
        """``[B, T-1]`` float32 values (module docstring); 0 where a token is padding.
        ``trunk_inputs(trunk)``: the trunk's keyword inputs for these rows as the actor
        prepares them (``Actor.trunk_inputs``: positions, media), built here, inside the
        forward (a sharded trunk's weights are gathered); by default a text model's.
        ``last_token``: ``[B]`` instead, the value read at each row's last real token (a
        scalar reward model's score of the whole row; rows right-padded)."""
        mask = attention_mask.to(sequences.device).bool()  # [B, T]
        with torch.set_grad_enabled(torch.is_grad_enabled() and trunk_gradients):
            inputs = (
                trunk_inputs(self.trunk)
                if trunk_inputs is not None
                else text_trunk_inputs(sequences, attention_mask)
            )
            hidden = self.actor_class.trunk_hidden_states(self.trunk, inputs)  # [B, T, H]
        if last_token:
            last = (mask.sum(-1) - 1).clamp(min=0)  # [B]
            return self.value_head(hidden[torch.arange(len(last), device=last.device), last])
        values = self.value_head(hidden[:, :-1])  # [B, T-1]
        valid = mask[:, 1:] & mask[:, :-1]  # [B, T-1]
        return torch.where(valid, values, torch.zeros_like(values))

    def gradient_checkpointing_enable(self) -> None:
        """Checkpoint every trunk layer (non-reentrant); turns the KV cache off."""
        self.trunk.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINT_KWARGS)
        self.trunk.config.use_cache = False

    # ---------------------------------------------------------------- transformers-like API
    @property
    def config(self) -> Any:
        """The trunk's transformers config (what strategies read to rebuild a model)."""
        return self.trunk.config

    @property
    def dtype(self) -> torch.dtype:
        return self.trunk.dtype

    @classmethod
    def _from_config(cls, config: Any, dtype: torch.dtype | None = None) -> CriticModel:
        """An untrained critic of the same shape (the constructor strategies use to rebuild a
        plain copy from gathered weights, to save it)."""
        return cls(trunk_class_of(config)._from_config(config, dtype=dtype))

    def save_pretrained(
        self, path: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None, **_: Any
    ) -> None:
        """Write the critic folder of the module docstring. ``state_dict``: this module's
        full state (keys ``trunk.*`` and ``value_head.*``) when the live one is sharded."""
        state = state_dict if state_dict is not None else self.state_dict()
        self.trunk.save_pretrained(path, state_dict=_with_prefix(state, "trunk."))
        self.value_head.save_pretrained(path, state_dict=_with_prefix(state, "value_head."))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        options: TrunkOptions | None = None,
        *,
        init_std: float = 0.0,
        actor_class: type[Actor] = Actor,
    ) -> CriticModel:
        """Load a critic folder, or a causal LM folder (its trunk, with a new head of
        ``init_std``), the trunk as ``actor_class`` loads one (``Actor.load_trunk``: every
        weight of it). ``options`` apply to the trunk; the head stays float32."""
        options = options or TrunkOptions()
        kwargs: dict[str, Any] = {"trust_remote_code": options.trust_remote_code}
        if options.dtype is not None:
            kwargs["dtype"] = options.dtype
        if options.attn_implementation is not None:
            kwargs["attn_implementation"] = options.attn_implementation
        trunk = actor_class.load_trunk(str(path), **kwargs)
        if is_critic_folder(path):
            head = ValueHead.from_pretrained(path)
        else:
            head = ValueHead(hidden_size_of(trunk), init_std=init_std)
        model = cls(trunk, head, actor_class=actor_class)
        if options.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model


def trunk_class_of(config: Any) -> Any:
    """The transformers class of a trunk with ``config``: its model type's base model
    (``AutoModel``), or, for a trunk that is a model with its head (a type ``AutoModel``
    does not map), the class its folder names (``config.architectures``)."""
    import transformers
    from transformers import MODEL_MAPPING

    if type(config) in MODEL_MAPPING:
        return MODEL_MAPPING[type(config)]
    if not config.architectures:
        raise ValueError(f"no transformers class for a trunk of model type {config.model_type!r}")
    return getattr(transformers, config.architectures[0])


def _with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
