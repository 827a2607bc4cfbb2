"""DAPO's overlong reward shaping: a pure function of tensors.

The group statistics GRPO and its variants use (group-normalised advantages, all-equal
groups, broadcasting to tokens) are the core's ``lightrft_core.algorithms.groups``.
"""

from __future__ import annotations

import torch


def overlong_length_penalty(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    """``[B]`` float32 in ``[−1, 0]``: DAPO's soft overlong punishment (arXiv 2503.14476,
    eq. 13) of responses of ``lengths`` tokens, ``L_max = max_length``, ``L_buf = buffer``::

        0                              if L <= L_max − L_buf
        ((L_max − L_buf) − L) / L_buf  if L_max − L_buf < L <= L_max
        −1                             if L > L_max

    i.e. ``clamp(−(L − (L_max − L_buf)) / L_buf, −1, 0)``. The caller multiplies it by the
    penalty factor and adds it to the reward.
    """
    if max_length < 1 or not 1 <= buffer <= max_length:
        raise ValueError(
            f"overlong shaping needs max_length >= 1 and 1 <= buffer <= max_length; got "
            f"max_length={max_length}, buffer={buffer}"
        )
    excess = lengths.float() - (max_length - buffer)  # [B]
    return (-excess / buffer).clamp(min=-1.0, max=0.0)
