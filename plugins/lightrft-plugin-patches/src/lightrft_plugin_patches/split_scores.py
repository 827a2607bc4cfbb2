"""Scores of a transformers sequence classifier computed with Ulysses sequence parallelism.

``sequence_parallel_scores(classifier, input_ids, attention_mask, group=...)`` is the
classifier's forward (e.g. ``LlamaForSequenceClassification``, what ``lightrft rm`` trains)
with every right-padded row split over the ``P`` ranks of ``group``: each rank runs the
decoder on its contiguous slice of ``ceil(T/P)`` positions (the ``ulysses_attention`` patch
exchanges heads and positions around the attention) and applies the score layer to its
slice; the slices' per-token scores are gathered over the group and each row's score is
read where the classifier pools, at its last token that is not ``config.pad_token_id``. Every
rank of the group returns the ``[B, H]`` scores of the unsplit classifier.

Gradients: the score of a row reaches the parameters through the rank holding its last
token, and each rank's parameters receive the gradient of its own positions: summed over
the group they are the unsplit classifier's (as for the log-probs, ``sequence_parallel.py``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from .collectives import gather_sequence
from .sequence_parallel import rank_slice, require_patched, whole_sequence_mask
from .ulysses import CONTEXT_KWARG, UlyssesAttention, UlyssesContext, family_of

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def enable_split_scores(classifier: torch.nn.Module, group: Any) -> None:
    """From now on ``classifier(input_ids=..., attention_mask=...)`` splits every row over
    ``group`` (``sequence_parallel_scores``), inside the classifier's own call (a strategy's
    hooks run as before). Applies the ``ulysses_attention`` patch to its model family."""
    base_model = cast("PreTrainedModel", classifier).base_model
    UlyssesAttention(UlyssesAttention.Config(models=[family_of(base_model)])).apply()
    classifier.forward = functools.partial(sequence_parallel_scores, classifier, group=group)


def sequence_parallel_scores(
    classifier: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    group: Any,
) -> Any:
    """The classifier's output (``SequenceClassifierOutput``) with ``logits`` ``[B, H]``,
    each row split over ``group`` (module docstring). Rows are right-padded; needs
    ``config.pad_token_id`` (the pooling) and the ``ulysses_attention`` patch."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    require_patched(classifier.base_model, "enable_split_scores(classifier, group)")
    pad_token_id = classifier.config.pad_token_id
    if pad_token_id is None:
        raise ValueError("a split sequence classifier needs config.pad_token_id (its pooling)")
    rows, length = input_ids.shape
    start, stop, padding = rank_slice(group, length)
    tokens = F.pad(input_ids, (0, padding), value=pad_token_id)  # [B, P*L]
    valid = F.pad(attention_mask.to(input_ids.device).bool(), (0, padding))
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    implementation = classifier.config._attn_implementation
    context = UlyssesContext(group, whole_sequence_mask(valid, implementation, classifier.dtype))
    states = classifier.base_model(
        input_ids=tokens[:, start:stop],
        position_ids=positions[:, start:stop],
        use_cache=False,
        **{CONTEXT_KWARG: context},
    ).last_hidden_state  # [B, L, hidden]
    per_token = gather_sequence(classifier.score(states), group, dim=1)  # [B, P*L, H]
    # the classifier's pooling: the last token that is not padding (the first if all are)
    kept = input_ids != pad_token_id  # [B, T]
    last = (torch.arange(length, device=input_ids.device) * kept).argmax(-1)  # [B]
    scores = per_token[torch.arange(rows, device=last.device), last]  # [B, H]
    # transformers types logits as the legacy torch.FloatTensor, which no Tensor matches
    return SequenceClassifierOutput(logits=scores)  # type: ignore[arg-type]
