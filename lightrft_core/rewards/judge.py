"""``reward.name: judge``: a generative reward model (an LLM judge) run in the training
process.

Each sample fills ``template`` (``{question}``, ``{response}``, ``{reference}``; in pairwise
mode ``{response_a}`` and ``{response_b}``), which is formatted as the data formats a prompt
(``system_prompt``, the judge's chat template) and answered by the judge:

* ``parser: verdict | score | boxed`` -- the judge generates a verdict with its own engine
  (``engine``: ``hf``, or ``vllm`` from its plugin), batched, and ``verdicts.py`` reads it: the
  last yes/no word, ``Score: 7/10`` -> 0.7, ``\\boxed{7}`` -> 0.7 (``max_score``);
* ``parser: yes_probability`` -- no sampling: one forward pass, and the score is the
  probability of ``yes_token`` as the judge's next token (against ``no_token``).

A verdict that cannot be read is a parse failure: the sample's reward is NaN, which the
loop's failure handling (``safe.py``) replaces by ``reward.failure_reward`` and counts in
``reward/failures``; ``reward/judge_parsed`` is the share of samples whose verdict was read.

Pairwise mode (``pairwise: first | round_robin``) judges two responses of the same group
(the samples of one prompt) at a time; a response's score is its win rate.

The reward is ``scale * score + shift``. The judge is frozen, in eval mode. Each sample's
generated verdict (pairwise: the texts of its judgements, one per line) is the text
``verdict`` of the output, saved with the rollouts as ``text/verdict`` (none with
``yes_probability``, which generates nothing).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from ..actors.options import DTYPES
from ..data.encoding import EncodedPrompt, PromptEncoder
from ..engines.hf import inference_mode, load_generative_model, prefill_inputs
from ..interfaces import (
    Actor,
    InferenceEngine,
    RewardInput,
    RewardModel,
    RewardOutput,
    SamplingParams,
)
from .model import _pick_device
from .trunk_scoring import reads_images
from .verdicts import (
    DEFAULT_SCORE_PATTERN,
    Match,
    VerdictParser,
    groups_of,
    matches,
    parse_boxed,
    parse_score,
    parse_verdict,
    verdict_pattern,
    win_rates,
    yes_probability,
)

logger = logging.getLogger("lightrft.reward")

POINTWISE_TEMPLATE = (
    "Is the response a correct answer to the question?\n"
    "Question: {question}\nReference answer: {reference}\nResponse: {response}\n"
    "Answer yes or no."
)
PAIRWISE_TEMPLATE = (
    "Which response answers the question better?\n"
    "Question: {question}\nResponse A: {response_a}\nResponse B: {response_b}\n"
    "Answer yes if response A is better, no if response B is."
)
PLACEHOLDERS = re.compile(r"\{(question|reference|response|response_a|response_b)\}")
PARSERS = ("verdict", "score", "boxed", "yes_probability")


def fill_template(template: str, values: dict[str, str]) -> str:
    """``template`` with its placeholders (``{question}``...) replaced in one pass: a value
    holding a placeholder's text is not replaced again, and other braces stay as written."""
    return PLACEHOLDERS.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def reference_text(label: Any) -> str:
    """A label as the judge reads it: a list of accepted answers joined by `` or ``."""
    if label is None:
        return ""
    if isinstance(label, (list, tuple)):
        return " or ".join(str(item) for item in label)
    return str(label)


@dataclass
class Judgement:
    """A batch as the judge saw it: each judge prompt's text, the judge's answer
    (empty with ``yes_probability``) and its score (``None``: unread); and each sample's
    judge-prompt indices (one, or its matches in pairwise mode)."""

    prompts: list[str]
    answers: list[str]
    scores: list[float | None]
    of_sample: list[list[int]]

    def sample_text(self, index: int) -> str:
        """Sample ``index``'s judge answers, one line per judgement."""
        return "\n".join(self.answers[j] for j in self.of_sample[index])


class JudgeReward(RewardModel):
    """Rewards from an LLM judge's verdicts (module docstring)."""

    name: ClassVar[str] = "judge"
    #: a text-only judge would judge an image prompt without its images
    accepts_image_prompts: ClassVar[bool] = False

    @dataclass
    class Config:
        path: str = field(
            default="",
            metadata={
                "help": "Hugging Face folder (or hub id) of the judge, a causal LM with "
                "its tokenizer (required)."
            },
        )
        template: str = field(
            default="",
            metadata={
                "help": "The judge prompt, with {question}, {response} and {reference} (pairwise: "
                "{response_a}, {response_b}); other braces are kept. Empty: the built-in "
                "template of the mode (docs/rewards.md)."
            },
        )
        system_prompt: str | None = field(
            default=None, metadata={"help": "System message of the judge prompt."}
        )
        apply_chat_template: bool = field(
            default=True,
            metadata={"help": "Format the judge prompt with the judge's chat template."},
        )
        question_key: str | None = field(
            default=None,
            metadata={
                "help": "Row field holding the question for {question}; null: the prompt as "
                "the policy saw it (its chat template included)."
            },
        )
        parser: Literal["verdict", "score", "boxed", "yes_probability"] = field(
            default="verdict",
            metadata={
                "help": "verdict: the last yes/no word; score: 'Score: 7/10' -> 0.7; boxed: "
                "\\boxed{7} -> 7/max_score; yes_probability: P(yes_token) from one forward "
                "pass, no generation."
            },
        )
        yes_words: list[str] = field(
            default_factory=lambda: ["yes"],
            metadata={"help": "verdict: words meaning accept (pairwise: A is better)."},
        )
        no_words: list[str] = field(
            default_factory=lambda: ["no"],
            metadata={"help": "verdict: words meaning reject (pairwise: B is better)."},
        )
        score_pattern: str = field(
            default=DEFAULT_SCORE_PATTERN,
            metadata={
                "help": "score: regular expression, group 1 the value, optional group 2 the "
                "scale written after it; the last match counts."
            },
        )
        max_score: float = field(
            default=10.0,
            metadata={"help": "score/boxed: the scale of a value written without one."},
        )
        yes_token: str = field(
            default="yes", metadata={"help": "yes_probability: the accepting token (one token)."}
        )
        no_token: str | None = field(
            default="no",
            metadata={
                "help": "yes_probability: the rejecting token; the score is then "
                "P(yes)/(P(yes)+P(no)). null: P(yes) over the whole vocabulary."
            },
        )
        pairwise: Literal["none", "first", "round_robin"] = field(
            default="none",
            metadata={
                "help": "none: judge each response alone; first: each response against its "
                "group's first; round_robin: every ordered pair of the group. Score: win rate."
            },
        )
        engine: str = field(
            default="hf", metadata={"help": "The judge's engine (hf, vllm...) for generation."}
        )
        engine_options: dict[str, Any] = field(
            default_factory=dict, metadata={"help": "Options of the judge's engine."}
        )
        max_new_tokens: int = field(
            default=64, metadata={"help": "Longest verdict in tokens (generation)."}
        )
        temperature: float = field(
            default=0.0, metadata={"help": "Judge sampling temperature; 0: greedy."}
        )
        seed: int | None = field(
            default=0, metadata={"help": "Seed of the judge's sampling (temperature > 0)."}
        )
        batch_size: int = field(default=16, metadata={"help": "Judge prompts per engine call."})
        dtype: Literal["float32", "bfloat16", "float16"] = field(
            default="float32", metadata={"help": "Weights and compute dtype (hf engine)."}
        )
        device: Literal["auto", "cpu", "cuda"] = field(
            default="auto",
            metadata={"help": "auto: this process's current CUDA device if any, else the CPU."},
        )
        actor: str | None = field(
            default=None,
            metadata={
                "help": "The actor class (plugin name, e.g. a vision-language actor) whose "
                "processor encodes the judge prompts with the prompt's images; needs "
                "question_key. null: a text judge."
            },
        )
        scale: float = field(default=1.0, metadata={"help": "reward = scale * score + shift."})
        shift: float = field(default=0.0, metadata={"help": "reward = scale * score + shift."})

        def __post_init__(self) -> None:
            if self.parser not in PARSERS:
                raise ValueError(f"parser must be one of {', '.join(PARSERS)}, got {self.parser!r}")
            if self.pairwise not in ("none", "first", "round_robin"):
                raise ValueError(
                    f"pairwise must be none, first or round_robin, got {self.pairwise!r}"
                )
            if self.template:
                needed = ("response",) if self.pairwise == "none" else ("response_a", "response_b")
                missing = [name for name in needed if "{" + name + "}" not in self.template]
                if missing:
                    raise ValueError(
                        f"template has no {', '.join('{' + m + '}' for m in missing)} "
                        f"(pairwise={self.pairwise})"
                    )
            if self.parser == "verdict":
                if not self.yes_words or not self.no_words:
                    raise ValueError("yes_words and no_words must each list at least one word")
                if {w.lower() for w in self.yes_words} & {w.lower() for w in self.no_words}:
                    raise ValueError("yes_words and no_words share a word")
            if self.parser == "score":
                try:
                    pattern = re.compile(self.score_pattern)
                except re.error as exc:
                    raise ValueError(f"score_pattern is not a regular expression: {exc}") from None
                if pattern.groups < 1:
                    raise ValueError("score_pattern needs a group capturing the value")
            if self.max_score <= 0:
                raise ValueError(f"max_score must be > 0, got {self.max_score}")
            if self.parser == "yes_probability" and self.engine != "hf":
                raise ValueError(
                    "parser=yes_probability reads the judge's logits in the training process: "
                    f"it needs engine=hf, got engine={self.engine!r}"
                )
            if self.max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
            if self.temperature < 0:
                raise ValueError(f"temperature must be >= 0, got {self.temperature}")
            if self.batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
            if self.dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
            if self.device not in ("auto", "cpu", "cuda"):
                raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
            if self.actor is not None and self.question_key is None:
                raise ValueError(
                    "a judge with actor= reads the prompts' images: set question_key to the row "
                    "field holding the question text (the policy's prompt holds its own "
                    "image placeholders)"
                )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        cfg = self.config
        if not cfg.path:
            raise ValueError(
                "reward.name=judge needs reward.path, the judge's Hugging Face folder "
                "(e.g. reward.path=runs/judge/final)"
            )
        self.template = cfg.template or (
            POINTWISE_TEMPLATE if cfg.pairwise == "none" else PAIRWISE_TEMPLATE
        )
        self.requires_label = "{reference}" in self.template  # type: ignore[misc]
        self.device = _pick_device(cfg.device)
        self._parse_failure_logged = False
        processor, tokenizer = self._load_processing(cfg)
        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(
            tokenizer,
            processor=processor,
            system_prompt=cfg.system_prompt,
            apply_chat_template=cfg.apply_chat_template,
        )
        self.model: torch.nn.Module | None = None
        if cfg.engine == "hf":
            model = load_generative_model(cfg.path).to(self.device, DTYPES[cfg.dtype])
            self.model = model.eval().requires_grad_(False)
        self.engine: InferenceEngine | None = None
        if cfg.parser == "yes_probability":
            self.yes_id = self._single_token(cfg.yes_token, "yes_token")
            self.no_id = (
                None if cfg.no_token is None else self._single_token(cfg.no_token, "no_token")
            )
        else:
            self.engine = self._start_engine()
            self.parse = self._parser()

    def _load_processing(self, cfg: Any) -> tuple[Any, Any]:
        """The judge's processor (``None`` for a text judge) and tokenizer."""
        if cfg.actor is None:
            from transformers import AutoTokenizer

            return None, AutoTokenizer.from_pretrained(cfg.path)
        from ..plugins import get_plugin_manager

        actor_class: type[Actor] = get_plugin_manager().get_actor(cfg.actor)
        processor = actor_class.load_processor(cfg.path)
        if processor is None:
            raise ValueError(
                f"reward.path={cfg.path!r} holds no processor, which reward.actor={cfg.actor!r} "
                "needs to encode the prompts' images"
            )
        self.accepts_image_prompts = reads_images(actor_class)  # type: ignore[misc]
        return processor, processor.tokenizer

    def _single_token(self, text: str, option: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"reward.{option}={text!r} is {len(ids)} tokens for the judge's tokenizer; "
                "yes_probability reads one token"
            )
        return int(ids[0])

    def _start_engine(self) -> InferenceEngine:
        from ..plugins import get_plugin_manager

        cfg = self.config
        engine_class = get_plugin_manager().get_engine(cfg.engine)
        try:
            engine_config = engine_class.Config(**cfg.engine_options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"reward.engine_options for engine {cfg.engine!r}: {exc}") from None
        engine = engine_class(engine_config)
        if self.model is not None:
            engine.setup(model=self.model, tokenizer=self.tokenizer)
        else:
            engine.setup(model_path=cfg.path, tokenizer=self.tokenizer)
        return engine

    def _parser(self) -> VerdictParser:
        cfg = self.config
        if cfg.parser == "score":
            pattern = re.compile(cfg.score_pattern)
            return lambda text: parse_score(text, pattern, cfg.max_score)
        if cfg.parser == "boxed":
            return lambda text: parse_boxed(text, cfg.max_score)
        words = verdict_pattern(cfg.yes_words, cfg.no_words)
        return lambda text: parse_verdict(text, words, cfg.yes_words)

    # ------------------------------------------------------------------ scoring
    def score(self, batch: RewardInput) -> RewardOutput:
        judgement = self.judge(batch)
        scores = self._sample_scores(judgement, batch)
        parsed = torch.isfinite(scores).float()
        texts: dict[str, list[str]] = {}
        if self.config.parser != "yes_probability":  # which generates no text
            texts["verdict"] = [judgement.sample_text(i) for i in range(len(batch))]
        return RewardOutput(
            rewards=self.config.scale * scores + self.config.shift,
            sub_scores={"judge_score": scores.nan_to_num(0.0), "judge_parsed": parsed},
            texts=texts,
        )

    def judge(self, batch: RewardInput) -> Judgement:
        """Fill, encode and answer the judge prompts of ``batch``."""
        texts, media, of_sample = self._judge_prompts(batch)
        encoded = [self._encode(text, images) for text, images in zip(texts, media, strict=True)]
        if self.config.parser == "yes_probability":
            scores: list[float | None] = self._yes_probabilities(encoded).tolist()
            answers = ["" for _ in encoded]
        else:
            answers = self._generate(encoded)
            scores = [self.parse(answer) for answer in answers]
            self._log_parse_failure(answers, scores)
        return Judgement([e.text for e in encoded], answers, scores, of_sample)

    def _question(self, batch: RewardInput, index: int) -> str:
        key = self.config.question_key
        if key is None:
            return batch.prompts[index]
        metadata = batch.metadata[index]
        if key not in metadata:
            raise ValueError(f"the row has no field {key!r} (reward.question_key)")
        return str(metadata[key])

    def _judge_prompts(
        self, batch: RewardInput
    ) -> tuple[list[str], list[list[Any]], list[list[int]]]:
        """The filled templates, the images each one shows, and each sample's prompts."""
        images = [[] if m is None else list(m.images) for m in batch.multimodal]
        texts: list[str] = []
        media: list[list[Any]] = []
        of_sample: list[list[int]] = [[] for _ in range(len(batch))]

        def add(index: int, values: dict[str, str], samples: tuple[int, ...]) -> None:
            values["question"] = self._question(batch, index)
            values["reference"] = reference_text(batch.labels[index])
            for sample in samples:
                of_sample[sample].append(len(texts))
            texts.append(fill_template(self.template, values))
            media.append(images[index])

        if self.config.pairwise == "none":
            for i, response in enumerate(batch.responses):
                add(i, {"response": response}, (i,))
            return texts, media, of_sample
        for group in groups_of(batch.prompts):
            for match in matches(self.config.pairwise, len(group)):
                a, b = group[match.a], group[match.b]
                values = {"response_a": batch.responses[a], "response_b": batch.responses[b]}
                add(a, values, (a, b))
        return texts, media, of_sample

    def _sample_scores(self, judgement: Judgement, batch: RewardInput) -> torch.Tensor:
        """Each sample's score (NaN when unread): its verdict, or its win rate."""
        if self.config.pairwise == "none":
            values = [judgement.scores[js[0]] for js in judgement.of_sample]
            return torch.tensor([float("nan") if v is None else v for v in values])
        scores = torch.full((len(batch),), float("nan"))
        position = 0
        for group in groups_of(batch.prompts):
            group_matches = matches(self.config.pairwise, len(group))
            read = judgement.scores[position : position + len(group_matches)]
            position += len(group_matches)
            judged: list[tuple[Match, float | None]] = list(zip(group_matches, read, strict=True))
            scores[group.start : group.stop] = win_rates(len(group), judged)
        return scores

    def _encode(self, text: str, images: list[Any]) -> EncodedPrompt:
        row: dict[str, Any] = {"prompt": text}
        if images:
            row["images"] = images
        return self.encoder.encode(row)

    def _generate(self, encoded: list[EncodedPrompt]) -> list[str]:
        cfg = self.config
        assert self.engine is not None
        params = SamplingParams(
            n=1,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            return_log_probs=False,
        )
        answers: list[str] = []
        for start in range(0, len(encoded), cfg.batch_size):
            chunk = encoded[start : start + cfg.batch_size]
            media = [e.multimodal for e in chunk]
            outputs = self.engine.generate(
                [e.ids for e in chunk],
                params,
                multimodal=media if any(m is not None for m in media) else None,
            )
            answers.extend(
                self.tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outputs
            )
        return answers

    def _yes_probabilities(self, encoded: list[EncodedPrompt]) -> torch.Tensor:
        """P(yes) of every judge prompt from the logits at its last token, left-padded
        batches of ``batch_size``."""
        assert self.model is not None
        probabilities = []
        for start in range(0, len(encoded), self.config.batch_size):
            chunk = encoded[start : start + self.config.batch_size]
            probabilities.append(yes_probability(self._last_logits(chunk), self.yes_id, self.no_id))
        return torch.cat(probabilities).cpu() if probabilities else torch.zeros(0)

    def _last_logits(self, chunk: list[EncodedPrompt]) -> torch.Tensor:
        assert self.model is not None
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), int(pad or 0), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(chunk):
            ids[row, width - len(e.ids) :] = torch.tensor(e.ids)
            mask[row, width - len(e.ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with inference_mode(self.model):
            inputs = prefill_inputs(self.model, ids, mask, [e.multimodal for e in chunk])
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=inputs.positions,
                use_cache=False,
                **inputs.media,
            )
        return out.logits[:, -1, :]

    def _log_parse_failure(self, answers: list[str], scores: list[float | None]) -> None:
        if self._parse_failure_logged or all(s is not None for s in scores):
            return
        self._parse_failure_logged = True
        text = answers[scores.index(None)]
        logger.warning(
            "reward 'judge' could not read a verdict (parser=%s) in %r; such samples get "
            "reward.failure_reward and count in reward/failures (logged once)",
            self.config.parser,
            text[:200],
        )
