"""Checks of the options algorithm plugins share (loss aggregation, KL), for their config
dataclasses' ``__post_init__``: a bad value raises ``ValueError`` naming the option, which
the configuration loader reports with its key and file line."""

from __future__ import annotations

from collections.abc import Sequence

from .aggregation import AGGREGATION_MODES
from .kl import KL_ESTIMATORS


def check_one_of(option: str, value: object, choices: Sequence[str]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}; got {value!r}")


def check_aggregation(
    loss_aggregation: str, max_tokens_norm: int | None, *, norm_required: bool
) -> None:
    """A known aggregation mode, ``max_tokens_norm >= 1`` when set, and set for
    ``seq-mean-token-sum-norm`` when ``norm_required`` (an algorithm that does not fall back
    to the engine's ``max_new_tokens``)."""
    check_one_of("loss_aggregation", loss_aggregation, AGGREGATION_MODES)
    if max_tokens_norm is not None and max_tokens_norm < 1:
        raise ValueError(f"max_tokens_norm must be >= 1, got {max_tokens_norm}")
    if norm_required and loss_aggregation == "seq-mean-token-sum-norm" and max_tokens_norm is None:
        raise ValueError(
            "loss_aggregation 'seq-mean-token-sum-norm' needs max_tokens_norm (e.g. the "
            "maximum generation length)"
        )


def check_kl(kl_coef: float, kl_estimator: str) -> None:
    """``kl_coef >= 0`` and a known estimator."""
    if kl_coef < 0.0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    check_one_of("kl_estimator", kl_estimator, KL_ESTIMATORS)
