"""KL coefficient controllers: fixed, and adaptive (Ziegler et al. 2019, "Fine-Tuning
Language Models from Human Preferences", arXiv 1909.08593, section 2.2).

The adaptive controller steers the measured KL towards a target::

    e = clip(KL / target − 1, −0.2, 0.2)
    β ← β · (1 + e · n / horizon)

where ``KL`` is the measured KL(π ‖ π_ref) of the step (the paper: per sample, i.e. the sum
over a response's tokens, averaged over the samples) and ``n`` the number of samples the
step used. The fixed controller keeps ``β`` constant. Both keep their state in
``state_dict()`` so a resumed run continues with the same ``β``.

The training loop owns the controller: it reads ``value`` before computing advantages /
losses and calls ``update(measured_kl, n)`` once per step.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

#: The kinds ``build_kl_controller`` accepts (a config field type).
KLControllerKind = Literal["fixed", "adaptive"]
KL_CONTROLLER_KINDS: tuple[str, ...] = get_args(KLControllerKind)

#: The proportional error of the adaptive controller is clipped to ``±ADAPTIVE_KL_ERROR_CLIP``.
ADAPTIVE_KL_ERROR_CLIP = 0.2


class FixedKLController:
    """``β`` stays what it was built with; ``update`` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Nothing to adapt; returns ``value``."""
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "fixed")
        self.value = float(state["value"])


class AdaptiveKLController:
    """``β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)`` (module docstring)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"the initial kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"the adaptive KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"the adaptive KL horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """One step of the controller with the measured ``current_kl`` over ``n_steps``
        samples; returns the new ``value``."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        error = current_kl / self.target - 1.0
        error = min(max(error, -ADAPTIVE_KL_ERROR_CLIP), ADAPTIVE_KL_ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "adaptive",
            "value": self.value,
            "target": self.target,
            "horizon": self.horizon,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "adaptive")
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])


KLController = FixedKLController | AdaptiveKLController


def build_kl_controller(
    kind: KLControllerKind,
    kl_coef: float,
    *,
    target: float | None = None,
    horizon: float | None = None,
) -> KLController:
    """``fixed`` (``kl_coef`` forever) or ``adaptive`` (needs ``target`` and ``horizon``)."""
    if kind == "fixed":
        return FixedKLController(kl_coef)
    if kind == "adaptive":
        if target is None or horizon is None:
            raise ValueError(
                "the adaptive KL controller needs a target KL and a horizon (e.g. target 6.0, "
                "horizon 10000 as in Ziegler et al. 2019)"
            )
        return AdaptiveKLController(kl_coef, target, horizon)
    raise ValueError(
        f"unknown KL controller {kind!r}; valid kinds: {', '.join(KL_CONTROLLER_KINDS)}"
    )


def _check_kind(state: dict[str, Any], expected: str) -> None:
    if state.get("kind") != expected:
        raise ValueError(
            f"this state belongs to a {state.get('kind')!r} KL controller, not a {expected!r} "
            "one: the run was resumed with a different KL controller kind"
        )
