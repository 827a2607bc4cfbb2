"""Reward-model training (``lightrft rm``): a Bradley–Terry reward model from preference
pairs, with the strategy, data and logging parts of SFT and RL.

For a text model (``model.name``'s actor takes token ids only) the model is ``model.path``
loaded as a sequence classifier with one output (a causal LM checkpoint gets a new, randomly
initialised score head); pairs with images are refused. For a model whose actor takes
images (a vision-language ``model.name``), it is the model's trunk (``AutoModel``: vision
tower and decoder) with a new linear score head (zero: every score starts at 0) read at the
last real token; pairs may carry images, encoded with the processor, and the trunk reads
them as the actor class prepares its inputs (``rewards/trunk_scoring.py``). The export is
then a trunk + head folder with the processor, which ``reward.name: model`` loads with
``reward.actor`` set to the same actor. Each pair is scored on both sides -- the text
``prompt + response`` that ``reward.name: model`` scores in RL, encoded the same way -- and
the loss is ``-log σ(s_chosen − s_rejected)``, averaged over the
optimizer batch's pairs.

With ``rm.heads`` (a text model only) the model has one output per named head (saved as
``num_labels`` with the names in ``config.id2label``) and each head is trained from its own
labels of the row (``rewards/heads.py``: which response it prefers, a cost head's direction
and Safe RLHF's safety classification term); the pair's loss is the sum over heads.

With sequence parallelism (``strategy.sequence_parallel_size`` P > 1, a text model, padded
rows) the P ranks of a group take the same share of each batch (``data_ranks``) and the
classifier's forward splits each row over them (the strategy's ``prepare``): every rank of
the group gets the scores of the whole rows; the loss is scaled by P (the strategy averages
gradients over every rank) and the logged sums count one rank per group.

With ``trainer.packing`` (a text model) the classifier reads packed rows: its score layer
applies to every position and each sequence's score is read where the classifier pools
(``actors/packing.py``, ``packed_classifier_scores``), every head at once; the scores,
loss and gradients are the padded run's. ``trainer.max_tokens_per_micro_batch`` cuts a
rank's pairs by tokens (both sides of a pair: their tokens packed, twice the longer side
padded; ``micro_batches.py``); held-out pairs are scored ``sft.micro_batch_size`` at a time.
A model that reads media refuses both keys.

The optimisation options are the ``sft`` section's (``batch_size``
counts pairs). Under ``torchrun`` every rank draws the same batches and trains on its
contiguous share; the loss divides by the pairs of every rank, so a step does not depend on
the number of ranks.

Metrics: ``rm/loss``, ``rm/accuracy`` (pairs with ``s_chosen > s_rejected``), ``rm/margin``
(mean ``s_chosen − s_rejected``); with ``data.eval_path``, ``eval/accuracy`` and
``eval/margin`` on the held-out pairs (every rank scores all of them) before the first and
after the last step. With several heads, accuracy and margin are means over the heads, and
each head's own are ``rm/accuracy/<head>``, ``eval/accuracy/<head>``, ``eval/margin/<head>``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..actors.packing import packed_classifier_scores, packs_into_one_row
from ..config import LightRFTConfig
from ..data.preferences import PreferenceDataset, PreferencePair
from ..models.critic import CriticModel
from ..plugins import PluginManager, get_plugin_manager
from ..rewards.heads import RewardHead, head_targets, pair_losses, parse_heads
from ..rewards.model import (
    encode_texts,
    head_scores_of,
    load_sequence_classifier,
    scoring_tokenizer,
)
from ..rewards.trunk_scoring import encode_with_media, reads_images, trunk_scores
from .bootstrap import (
    RunStart,
    finish_run,
    model_path,
    open_run_log,
    released_on_error,
    start_run,
)
from .distributed import (
    check_group_agrees,
    check_splittable,
    data_ranks,
    model_init_context,
    no_sync,
)
from .micro_batches import agree_over_ranks, plan_micro_batches
from .supervised import prepare_supervised


@dataclass
class RewardModelResult:
    output_dir: Path
    final_model: Path
    history: list[dict[str, Any]]


def run_reward_model_training(
    cfg: LightRFTConfig,
    manager: PluginManager | None = None,
    *,
    console: Any = None,
    progress: Any = None,
) -> RewardModelResult:
    """Train on ``data.train_path`` preference pairs; export to ``final/`` (what
    ``reward.name: model`` loads: a sequence classifier, or a trunk + score head)."""
    d, s = cfg.data, cfg.sft
    if d.train_path is None:
        raise ValueError("data.train_path is not set: reward-model training needs preference rows")
    manager = manager or get_plugin_manager()
    start = start_run(cfg, manager, global_batches={"sft.batch_size": s.batch_size})
    with released_on_error(start):  # finish_run releases the run folder after a clean run
        return _train_reward_model(cfg, manager, start, d.train_path, console, progress)


def _train_reward_model(
    cfg: LightRFTConfig,
    manager: PluginManager,
    start: RunStart,
    train_path: str,
    console: Any,
    progress: Any,
) -> RewardModelResult:
    d, s = cfg.data, cfg.sft
    start.tokenizer = tokenizer = scoring_tokenizer(start.tokenizer)
    strategy, path = start.strategy, model_path(cfg, manager)
    actor_class = manager.get_actor(cfg.model.name)
    with_media = reads_images(actor_class)
    packing, max_tokens = cfg.trainer.packing, cfg.trainer.max_tokens_per_micro_batch
    if with_media and (packing is True or max_tokens is not None):
        raise ValueError(
            f"lightrft rm with a model that reads media (model.name={cfg.model.name!r}) does "
            "not pack rows or cut micro-batches by tokens; unset trainer.packing and "
            "trainer.max_tokens_per_micro_batch"
        )
    check_splittable(strategy, shared_critic=False, media=with_media)
    splitting = strategy.sequence_parallel_size > 1
    if splitting and packing is True:
        raise ValueError(
            "lightrft rm does not pack rows while it splits them (strategy."
            "sequence_parallel_size > 1); set trainer.packing: false"
        )
    processor = _processor_for_images(start, cfg.model.name) if with_media else None
    heads = parse_heads(cfg.rm.heads)
    if with_media and len(heads) > 1:
        raise ValueError(
            f"rm.heads: a reward model that reads media (model.name={cfg.model.name!r}) has "
            "one score head; several heads need a text model"
        )
    with model_init_context(strategy):
        if with_media:
            model: torch.nn.Module = CriticModel.from_pretrained(path, actor_class=actor_class)
        else:
            classifier = load_sequence_classifier(
                path,
                num_labels=len(heads),
                id2label={i: head.name for i, head in enumerate(heads)},
                label2id={head.name: i for i, head in enumerate(heads)},
            )
            classifier.config.pad_token_id = tokenizer.pad_token_id  # pooling: last non-pad
            model = classifier
    # trainer.packing 'auto': packed when the classifier reads the packed rows without a mask
    packing = (
        not with_media
        and not splitting
        and (packing is True or (packing == "auto" and packs_into_one_row(model)))
    )
    label_keys = list(dict.fromkeys(key for head in heads for key in head.row_keys()))

    def dataset(source: str, max_length: int | None) -> PreferenceDataset:
        return PreferenceDataset.from_source(
            source,
            tokenizer,
            d,
            max_length=max_length,
            processor=processor,
            label_keys=label_keys,
        )

    train = dataset(train_path, s.max_length)
    held_out = None if d.eval_path is None else dataset(d.eval_path, None)
    model, optimizer, scheduler, total = prepare_supervised(cfg, strategy, model, len(train))
    metrics = open_run_log(cfg, strategy, manager, console=console)

    def scores_of_texts(
        texts: list[str], images: list[list[Any]], audios: list[list[Any]]
    ) -> torch.Tensor:
        """``[b, H]`` scores of every head."""
        if with_media:
            batch = encode_with_media(processor, actor_class, texts, images, audios)
            return trunk_scores(model, actor_class, batch.to(strategy.device))[:, None]
        encoded = encode_texts(tokenizer, texts, s.max_length).to(strategy.device)
        if packing:
            classifier = strategy.unwrap(model)
            return packed_classifier_scores(
                model,
                classifier,
                encoded["input_ids"],
                encoded["attention_mask"],
                one_row=packs_into_one_row(classifier),
            )
        return head_scores_of(model, encoded)

    def pair_tokens(rows: torch.Tensor) -> torch.Tensor:
        """What scoring each pair of ``rows`` computes (``plan_micro_batches``): both
        sides' tokens packed, twice its longer side padded."""
        pairs = [train[int(i)] for i in rows]
        ids = tokenizer(
            [p.chosen for p in pairs] + [p.rejected for p in pairs],
            truncation=s.max_length is not None,
            max_length=s.max_length,
        )["input_ids"]
        sides = torch.tensor([len(i) for i in ids]).view(2, len(pairs))
        return sides.sum(0) if packing else 2 * sides.max(0).values

    def margins(pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, margin)``, ``[n, H]`` (``rewards/heads.py``), both sides in one
        forward pass."""
        texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        images = [p.images for p in pairs] * 2
        audios = [p.audios for p in pairs] * 2
        with strategy.autocast():
            scores = scores_of_texts(texts, images, audios).float()
        targets = head_targets([p.labels for p in pairs], heads)
        return pair_losses(scores[: len(pairs)], scores[len(pairs) :], targets, heads)

    if held_out is not None:
        metrics.log(0, evaluate(model, held_out, margins, s.micro_batch_size, heads))
    generator = torch.Generator().manual_seed(cfg.run.seed)
    row_ranks = data_ranks(strategy)  # the pairs: one rank per sequence-parallel group
    # the loss scale: the strategy averages gradients over every rank, a group's ranks each
    # holding part of its pairs' gradient
    group_size = strategy.world_size // row_ranks.world_size
    step = 0
    model.train()
    for _epoch in range(s.epochs):
        for batch_rows in torch.randperm(len(train), generator=generator).split(s.batch_size):
            if step >= total:
                break
            share = len(batch_rows) // row_ranks.world_size  # a short last batch: equal shares
            if share == 0:
                continue
            started = time.perf_counter()
            rows_of_rank = batch_rows[row_ranks.rank * share : (row_ranks.rank + 1) * share]
            check_group_agrees(strategy, {"pairs": rows_of_rank})
            plan = plan_micro_batches(
                pair_tokens(rows_of_rank) if max_tokens is not None else torch.ones(share),
                micro_batch_size=s.micro_batch_size,
                max_tokens=max_tokens,
                packing=packing,
                agree=agree_over_ranks(strategy),
            )
            mine = [rows_of_rank[positions] for positions in plan]
            # loss, then each head's correct pairs and margin (sums on this rank)
            sums = torch.zeros(1 + 2 * len(heads), dtype=torch.float64)
            for index, rows in enumerate(mine):
                last = index == len(mine) - 1
                with nullcontext() if last else no_sync(strategy, model):
                    losses, margin = margins([train[int(i)] for i in rows])
                    # this rank's mean; the strategy averages the ranks' gradients, which
                    # gives the mean over every rank's pairs (a group's summed)
                    strategy.backward(losses.sum() * group_size / share, model)
                margin = margin.detach().double().cpu()
                sums[0] += float(losses.detach().sum())
                sums[1::2] += (margin > 0).sum(0)
                sums[2::2] += margin.sum(0)
            grad_norm = strategy.optimizer_step(
                model, optimizer, scheduler, max_grad_norm=cfg.trainer.max_grad_norm
            )
            step += 1
            totals = row_ranks.all_reduce(sums, op="sum") / (share * row_ranks.world_size)
            elapsed = float(
                strategy.all_reduce(torch.tensor([time.perf_counter() - started]), op="max")
            )
            metrics.log(
                step,
                {
                    "rm/loss": float(totals[0]),
                    **head_metrics("rm", heads, totals[1::2], totals[2::2]),
                    "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "time/step": elapsed,
                },
            )
            if progress is not None:
                progress(step, total)
    if held_out is not None:
        model.eval()
        metrics.log(step, evaluate(model, held_out, margins, s.micro_batch_size, heads))
    final = finish_run(start, model, metrics)
    return RewardModelResult(start.output_dir, final, metrics.history)


def _processor_for_images(start: RunStart, actor: str) -> Any:
    """The run's processor, which a model that reads images needs to encode them."""
    if start.processor is None:
        raise ValueError(
            f"actor {actor!r} reads images, but model.path holds no processor "
            f"(Actor.load_processor) to encode them; use the model's folder with its processor"
        )
    return start.processor


def head_metrics(
    prefix: str, heads: list[RewardHead], correct: torch.Tensor, margin: torch.Tensor
) -> dict[str, float]:
    """``<prefix>/accuracy`` and ``<prefix>/margin`` (means over the heads of ``[H]``
    per-pair means), and each head's own when there are several."""
    out = {f"{prefix}/accuracy": float(correct.mean()), f"{prefix}/margin": float(margin.mean())}
    if len(heads) > 1:
        for index, head in enumerate(heads):
            out[f"{prefix}/accuracy/{head.name}"] = float(correct[index])
            out[f"{prefix}/margin/{head.name}"] = float(margin[index])
    return out


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    pairs: PreferenceDataset,
    margins: Any,
    size: int,
    heads: list[RewardHead],
) -> dict[str, float]:
    """``eval/accuracy`` and ``eval/margin`` (per head too, ``head_metrics``) over every
    held-out pair. Every rank scores every pair (the same forward passes on each rank, as
    sharded models need)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(heads), dtype=torch.float64)
    total = torch.zeros(len(heads), dtype=torch.float64)
    for start in range(0, len(pairs), size):
        _, margin = margins(list(pairs[start : start + size]))
        margin = margin.double().cpu()
        correct += (margin > 0).sum(0)
        total += margin.sum(0)
    model.train(was_training)
    return head_metrics("eval", heads, correct / len(pairs), total / len(pairs))
