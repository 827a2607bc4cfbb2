"""``reward.name: model``: a scalar reward model run in the training process -- a Hugging
Face sequence-classification checkpoint, e.g. a Bradley–Terry reward model, with one output
or several named heads (``num_labels`` outputs named by ``config.id2label``, as ``lightrft
rm`` saves a model trained with ``rm.heads``). The reward is the score of ``head`` (the only
one, by default); every head's score is logged as a sub-score under the head's name, so a
``cost`` head feeds Safe RLHF (``reward.cost_limit``, ``safe_rlhf.py``).

Each sample is scored as the text ``prompt + response``: the prompt as the policy saw it
(chat template applied) followed by the response. The model's score of the last token is
the reward (transformers' ``*ForSequenceClassification`` pools the last non-padding token).
Samples are scored ``batch_size`` at a time, padded on the right; a text longer than
``max_length`` tokens keeps its end (the response) and loses the start of the prompt.

The reward is ``scale * score + shift``; ``trainer.reward_normalize`` normalises it further
if wanted. The model is frozen, in eval mode, under ``torch.no_grad``.

Placement (``place``, called by the RL loop): the strategy prepares the model as an
inference model -- sharded under fsdp (ZeRO-3 partitioned under deepspeed), on the device
under ``local`` -- instead of a full copy on every rank; with ``offload`` it stays on the CPU
and is moved to the strategy's device only while it scores; ``device: cpu`` keeps it on the
CPU. The parameter bytes this rank holds (and the CUDA memory allocated) before and after
are logged. Scoring a sharded model is collective: every rank must score as many batches.

With ``actor`` unset the model reads text only: a run whose prompts carry images is
refused (``accepts_image_prompts``), since transformers has no sequence-classification head
for the vision-language models LightRFT trains. With ``actor`` naming an actor class (e.g. a
vision-language one), ``path`` is the folder ``lightrft rm`` exports with that
``model.name``: the model's trunk plus a score head read at the last real token, which reads
each prompt's images with the text (``trunk_scoring.py``, docs/multimodal.md). The text is
then not truncated (``max_length`` is unused).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from ..actors.options import DTYPES
from ..interfaces import Actor, RewardInput, RewardModel, RewardOutput, StrategyBase
from ..models.critic import TrunkOptions
from .heads import head_names_of
from .trunk_scoring import encode_with_media, load_trunk_reward_model, reads_images, trunk_scores

logger = logging.getLogger("lightrft.reward")


class ScalarRewardModel(RewardModel):
    """Rewards from a sequence-classification model with one output (module docstring)."""

    name: ClassVar[str] = "model"
    #: a sequence classifier reads text: a prompt's images would go unseen
    accepts_image_prompts: ClassVar[bool] = False

    @dataclass
    class Config:
        path: str = field(
            default="",
            metadata={
                "help": "Hugging Face folder (or hub id) of a sequence-classification model "
                "(one output, or named heads) and its tokenizer (required)."
            },
        )
        batch_size: int = field(default=16, metadata={"help": "Samples per forward pass."})
        max_length: int | None = field(
            default=None,
            metadata={
                "help": "Longest prompt + response in tokens; longer texts lose the start of "
                "the prompt. null: no limit."
            },
        )
        dtype: Literal["float32", "bfloat16", "float16"] = field(
            default="float32", metadata={"help": "Weights and compute dtype."}
        )
        device: Literal["auto", "cpu", "cuda"] = field(
            default="auto",
            metadata={
                "help": "auto: this process's current CUDA device if any, else the CPU; in a "
                "run the strategy places the model instead (cpu: it stays on the CPU)."
            },
        )
        head: str | None = field(
            default=None,
            metadata={
                "help": "The head whose score is the reward, for a model with several named "
                "heads (lightrft rm with rm.heads); every head is logged as a sub-score. "
                "null: the model's only head."
            },
        )
        offload: bool = field(
            default=False,
            metadata={
                "help": "In a run: keep the model on the CPU and move it to the device only "
                "while it scores, instead of letting the strategy place (shard) it."
            },
        )
        scale: float = field(default=1.0, metadata={"help": "reward = scale * score + shift."})
        shift: float = field(default=0.0, metadata={"help": "reward = scale * score + shift."})
        actor: str | None = field(
            default=None,
            metadata={
                "help": "The actor class (its plugin name, e.g. a vision-language actor) whose "
                "inputs the reward model reads: path is then a `lightrft rm` export trained "
                "with that model.name (a trunk and a score head), and image prompts are "
                "scored with their images. null: a text sequence classifier."
            },
        )

        def __post_init__(self) -> None:
            if self.batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
            if self.max_length is not None and self.max_length < 2:
                raise ValueError(f"max_length must be >= 2, got {self.max_length}")
            if self.dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
            if self.device not in ("auto", "cpu", "cuda"):
                raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        cfg = self.config
        if not cfg.path:
            raise ValueError(
                "reward.name=model needs reward.path, a sequence-classification checkpoint "
                "(e.g. reward.path=runs/rm/final)"
            )
        self.device = _pick_device(cfg.device)
        self.actor_class: type[Actor] | None = None
        if cfg.actor is not None:
            self._load_trunk_model(cfg.actor)
            return
        from transformers import AutoTokenizer

        self.tokenizer = scoring_tokenizer(AutoTokenizer.from_pretrained(cfg.path))
        model = load_sequence_classifier(cfg.path, dtype=DTYPES[cfg.dtype])
        self.heads = head_names_of(model.config)
        self.head_index = self._head_index(self.heads)
        if model.config.pad_token_id is None:  # pooling finds the last non-pad token
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(self.device).eval().requires_grad_(False)

    def _head_index(self, heads: list[str]) -> int:
        """The output of ``reward.head`` among the model's ``heads``."""
        wanted = self.config.head
        if wanted is None and len(heads) > 1:
            raise ValueError(
                f"reward.path={self.config.path!r} has {len(heads)} heads ({', '.join(heads)}); "
                "set reward.head to the one whose score is the reward"
            )
        if wanted is not None and wanted not in heads:
            raise ValueError(
                f"reward.head={wanted!r}: reward.path={self.config.path!r} has the heads "
                f"{', '.join(heads)}"
            )
        return 0 if wanted is None else heads.index(wanted)

    def place(self, strategy: StrategyBase) -> None:
        """Let ``strategy`` place the model (module docstring); logs its memory."""
        cfg = self.config
        before = _memory(self.model, self.device)
        if cfg.offload or cfg.device == "cpu":
            self.model.to("cpu")
            self.device = strategy.device if cfg.offload else torch.device("cpu")
            how = "kept on the CPU, moved to the device to score" if cfg.offload else "on the CPU"
        else:
            self.model, _, _ = strategy.prepare(self.model)
            self.device = strategy.device
            how = f"placed by strategy {strategy.name!r}"
        after = _memory(self.model, self.device)
        logger.info(
            "reward model %s (rank %d): %s; parameters on this rank %.1f MB -> %.1f MB, "
            "device memory allocated %.1f MB -> %.1f MB",
            cfg.path,
            strategy.rank,
            how,
            before["parameter_bytes"] / 2**20,
            after["parameter_bytes"] / 2**20,
            before["device_bytes"] / 2**20,
            after["device_bytes"] / 2**20,
        )
        self.memory = {"before": before, "after": after}

    def _load_trunk_model(self, actor: str) -> None:
        """The trunk + score head of ``path``, read as ``actor``'s architecture."""
        from ..plugins import get_plugin_manager

        cfg = self.config
        self.actor_class = get_plugin_manager().get_actor(actor)
        self.processor = self.actor_class.load_processor(cfg.path)
        if self.processor is None:
            raise ValueError(
                f"reward.path={cfg.path!r} holds no processor, which reward.actor={actor!r} "
                "needs to encode the prompts' images (a `lightrft rm` export has one)"
            )
        options = TrunkOptions(dtype=DTYPES[cfg.dtype])
        model = load_trunk_reward_model(cfg.path, self.actor_class, options)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.heads, self.head_index = ["score"], self._head_index(["score"])
        # the instance reads images exactly when its architecture takes them
        self.accepts_image_prompts = reads_images(self.actor_class)  # type: ignore[misc]

    @torch.no_grad()
    def score(self, batch: RewardInput) -> RewardOutput:
        cfg = self.config
        texts = [p + r for p, r in zip(batch.prompts, batch.responses, strict=True)]
        media = batch.multimodal or [None] * len(texts)
        images = [[] if m is None else list(m.images) for m in media]
        audios = [[] if m is None else list(m.audios) for m in media]
        every = torch.zeros(len(texts), len(self.heads), dtype=torch.float32)
        with self._on_device():
            for start in range(0, len(texts), cfg.batch_size):
                end = start + cfg.batch_size
                chunk = texts[start:end]
                every[start : start + len(chunk)] = self._scores(
                    chunk, images[start:end], audios[start:end]
                )
        scores = every[:, self.head_index]
        rewards = cfg.scale * scores + cfg.shift
        sub_scores = {"model_score": scores.clone()}
        if len(self.heads) > 1:
            sub_scores.update({name: every[:, i].clone() for i, name in enumerate(self.heads)})
        return RewardOutput(rewards=rewards, sub_scores=sub_scores)

    @contextmanager
    def _on_device(self) -> Iterator[None]:
        """With ``offload``: the model on the device while it scores, then back on the CPU."""
        if not self.config.offload or self.device.type == "cpu":
            yield
            return
        self.model.to(self.device)
        try:
            yield
        finally:
            self.model.to("cpu")

    def _scores(
        self, texts: list[str], images: list[list[Any]], audios: list[list[Any]]
    ) -> torch.Tensor:
        """``[b, H]`` scores of every head."""
        if self.actor_class is not None:
            batch = encode_with_media(self.processor, self.actor_class, texts, images, audios)
            scores = trunk_scores(self.model, self.actor_class, batch.to(self.device))
            return scores.float().cpu()[:, None]
        encoded = encode_texts(self.tokenizer, texts, self.config.max_length).to(self.device)
        return head_scores_of(self.model, encoded).float().cpu()


def load_sequence_classifier(path: str, **kwargs: Any) -> Any:
    """``AutoModelForSequenceClassification.from_pretrained(path, **kwargs)``, with an error
    that says so when the architecture has no sequence-classification head (e.g. the
    vision-language models, read through their actor instead: ``trunk_scoring.py``)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"{path}: transformers has no sequence-classification head for model type "
            f"{model_type!r}, so it cannot be a scalar reward model read as text; for a "
            "vision-language model name its actor (model.name for lightrft rm, reward.actor for "
            "reward.name=model), which reads it as a trunk with a score head (docs/multimodal.md)"
        )
    return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)


def scoring_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer`` set up as reward models read text: right padding (a pad token, the EOS
    if it has none) and truncation from the left (the response is kept)."""
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_texts(tokenizer: Any, texts: list[str], max_length: int | None) -> Any:
    """The batch a reward model reads (``scoring_tokenizer``'s), the same in training
    (``lightrft rm``) and in scoring."""
    encoded = tokenizer(
        texts,
        padding=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_tensors="pt",
    )
    if encoded["input_ids"].shape[1] == 0:  # only empty texts
        raise ValueError("every text of the batch is empty; nothing to score")
    return encoded


def head_scores_of(model: torch.nn.Module, encoded: Any) -> torch.Tensor:
    """``[b, H]`` scores of a sequence classifier, one per head (last-token pooling)."""
    return model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits


def _memory(model: torch.nn.Module, device: torch.device) -> dict[str, float]:
    """The bytes of ``model``'s parameters held by this process (a shard's local part) and
    the CUDA memory allocated on ``device`` (0 on the CPU)."""
    from torch.distributed.tensor import DTensor

    held = 0
    for parameter in model.parameters():
        local = parameter.to_local() if isinstance(parameter, DTensor) else parameter
        held += local.numel() * local.element_size()
    allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    return {"parameter_bytes": float(held), "device_bytes": float(allocated)}


def _pick_device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("reward.device is 'cuda' but no CUDA device is available")
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
