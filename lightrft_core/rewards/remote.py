"""``reward.name: remote``: rewards from an HTTP service (a reward model served elsewhere, a
sandbox that runs code, a judge behind an API).

Protocol: one ``POST <url>`` per chunk of at most ``batch_size`` samples, JSON body::

    {"prompts": [str], "responses": [str], "labels": [any], "metadata": [object]}

answered with ``200`` and::

    {"rewards": [number], "sub_scores": {"<name>": [number]}}      # sub_scores optional

one reward (and one value per sub-score) per sample, in order: numbers, ``true``/``false``
(1/0), or ``null`` for a sample the service could not score. A sub-score named ``accuracy``
becomes the run's ``accuracy`` and ``eval/accuracy``.

Failures:

* a connection error, a timeout, ``408``, ``429`` or a ``5xx`` is retried ``max_retries``
  times with exponential back-off (``retry_backoff_s``, doubling). If it still fails, the
  service is unavailable: the whole batch fails at once (every sample gets
  ``reward.failure_reward`` and counts in ``reward/failures``), so a service that is down
  costs one chunk's retries, not one request per sample;
* any other ``4xx`` (a wrong ``url`` answering ``404``, a missing key answering ``401``) or a
  malformed answer fails the whole batch at once, too: it is a problem of the endpoint, not of
  a sample, and the batch is not re-sent one sample at a time. A service that cannot score
  one sample answers ``null`` for it.

Each kind of failure is logged once (``lightrft_core.rewards.safe``); the run stops when
failures persist (``reward.max_failure_rate``). ``request_timeout_s`` bounds one HTTP request;
``reward.timeout_s`` (when set) bounds the whole batch, retries included.

Only the standard library is used (``urllib``); the requests are sent one after another.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..interfaces import RewardInput, RewardModel, RewardOutput
from .safe import BatchFailure

RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RemoteRewardError(BatchFailure):
    """The service refused a request, answered something that is not a reward list, or
    stayed unavailable; the whole batch fails (``kind``: ``HTTP 404``, ``malformed answer``,
    ``unavailable``)."""


class RemoteReward(RewardModel):
    """Rewards computed by an HTTP service (module docstring: protocol and failures)."""

    name: ClassVar[str] = "remote"

    @dataclass
    class Config:
        url: str = field(
            default="",
            metadata={"help": "The service's endpoint, http:// or https:// (required)."},
        )
        batch_size: int = field(
            default=64,
            metadata={"help": "Samples per request; a larger batch is sent in chunks."},
        )
        request_timeout_s: float = field(
            default=60.0,
            metadata={
                "help": "Seconds to wait for one HTTP request's answer (reward.timeout_s "
                "bounds the whole batch, retries included)."
            },
        )
        max_retries: int = field(
            default=3,
            metadata={
                "help": "Retries of a request that failed to connect, timed out, or got "
                "429/5xx; 0 sends it once."
            },
        )
        retry_backoff_s: float = field(
            default=1.0,
            metadata={"help": "Wait before the first retry; doubled for each further one."},
        )
        api_key_env: str | None = field(
            default=None,
            metadata={
                "help": "Name of an environment variable holding a key, sent as "
                "'Authorization: Bearer <key>' (the key itself never goes in a config file)."
            },
        )

        def __post_init__(self) -> None:
            if self.url and not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
            if self.batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
            if not self.request_timeout_s > 0:
                raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
            if self.max_retries < 0:
                raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
            if self.retry_backoff_s < 0:
                raise ValueError(f"retry_backoff_s must be >= 0, got {self.retry_backoff_s}")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        if not self.config.url:
            raise ValueError(
                "reward.name=remote needs reward.url, the service's endpoint "
                "(e.g. reward.url=http://localhost:8000/score)"
            )
        self._headers = {"Content-Type": "application/json"}
        key_env = self.config.api_key_env
        if key_env is not None:
            key = os.environ.get(key_env)
            if not key:
                raise ValueError(
                    f"reward.api_key_env={key_env!r}, but that environment variable is not set"
                )
            self._headers["Authorization"] = f"Bearer {key}"

    def score(self, batch: RewardInput) -> RewardOutput:
        n = len(batch)
        rewards = torch.full((n,), float("nan"), dtype=torch.float32)
        subs: dict[str, torch.Tensor] = {}
        size = self.config.batch_size
        for start in range(0, n, size):
            stop = min(start + size, n)
            answer = self._request(_payload(batch, start, stop))
            chunk_rewards, chunk_subs = self._parse(answer, stop - start)
            rewards[start:stop] = chunk_rewards
            for name, values in chunk_subs.items():
                subs.setdefault(name, torch.zeros(n, dtype=torch.float32))[start:stop] = values
        return RewardOutput(rewards=rewards, sub_scores=subs)

    # ------------------------------------------------------------------ HTTP
    def _request(self, payload: dict[str, Any]) -> Any:
        """The decoded JSON answer; ``RemoteRewardError`` when the service refused the request,
        answered no JSON or stayed unavailable after the retries."""
        cfg = self.config
        body = json.dumps(payload, default=str).encode("utf-8")  # odd metadata as text
        samples = len(payload["responses"])
        delay = cfg.retry_backoff_s
        problem = ""
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            request = urllib.request.Request(cfg.url, data=body, headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=cfg.request_timeout_s) as response:
                    text = response.read().decode("utf-8")
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", errors="replace")[:300]
                if error.code not in RETRIED_STATUSES:
                    raise RemoteRewardError(
                        f"remote reward {cfg.url} answered HTTP {error.code} ({error.reason}) "
                        f"to a request of {samples} samples: {detail}; check reward.url "
                        "(and reward.api_key_env) against the service",
                        kind=f"HTTP {error.code}",
                    ) from error
                problem = f"HTTP {error.code}: {detail}"
                continue
            except urllib.error.URLError as error:
                problem = f"URLError: {error.reason}"
                continue
            except (TimeoutError, ConnectionError) as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            try:
                return json.loads(text)
            except json.JSONDecodeError as error:
                raise RemoteRewardError(
                    f"remote reward {cfg.url} answered something that is not JSON: {text[:300]!r}",
                    kind="malformed answer",
                ) from error
        raise RemoteRewardError(
            f"remote reward {cfg.url} unavailable after {cfg.max_retries + 1} attempts "
            f"({problem}); is the service running?",
            kind="unavailable",
        )

    def _parse(self, answer: Any, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        url = self.config.url
        if not isinstance(answer, dict) or "rewards" not in answer:
            raise RemoteRewardError(
                f"remote reward {url}: expected a JSON object with 'rewards', got "
                f"{str(answer)[:200]}",
                kind="malformed answer",
            )
        rewards = _numbers(answer["rewards"], size, f"remote reward {url}: 'rewards'")
        subs = {}
        for name, values in (answer.get("sub_scores") or {}).items():
            subs[str(name)] = _numbers(values, size, f"remote reward {url}: sub-score {name!r}")
        return rewards, subs


def _payload(batch: RewardInput, start: int, stop: int) -> dict[str, Any]:
    labels = list(batch.labels or [None] * len(batch))
    metadata = list(batch.metadata or [{} for _ in range(len(batch))])
    return {
        "prompts": list(batch.prompts[start:stop]),
        "responses": list(batch.responses[start:stop]),
        "labels": labels[start:stop],
        "metadata": metadata[start:stop],
    }


def _numbers(values: Any, size: int, what: str) -> torch.Tensor:
    """``values`` as a ``[size]`` float32 tensor (null -> NaN, i.e. a failed sample;
    true/false -> 1/0)."""
    if not isinstance(values, list) or len(values) != size:
        count = len(values) if isinstance(values, list) else type(values).__name__
        raise RemoteRewardError(
            f"{what} has {count} values for {size} samples; expected one per sample",
            kind="malformed answer",
        )
    out = []
    for value in values:
        if value is None:
            out.append(math.nan)
        elif isinstance(value, (int, float)):  # bool is an int: pass/fail as 1/0
            out.append(float(value))
        else:
            raise RemoteRewardError(
                f"{what} holds {value!r}, not a number", kind="malformed answer"
            )
    return torch.tensor(out, dtype=torch.float32)
