"""Rewards that fail: the per-batch timeout (``reward.timeout_s``), whole-batch failures
(``BatchFailure``, a remote 404) that are not re-sent one sample at a time, the warning on
sub-scores of the wrong length, and the run that stops with one clear error when every
sample keeps failing (``reward.max_failure_rate`` / ``reward.max_failure_steps``)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from lightrft_cli.main import app
from lightrft_core.config import ConfigError, load_config
from lightrft_core.interfaces import RewardInput, RewardModel, RewardOutput
from lightrft_core.rewards import (
    BatchFailure,
    RemoteReward,
    reset_failure_log,
    score_safely,
)
from lightrft_core.trainer.reward_failures import RewardFailureError, RewardFailureWatch


def batch_of(n: int) -> RewardInput:
    return RewardInput(
        prompts=[f"p{i}" for i in range(n)],
        responses=["x" * (i + 1) for i in range(n)],
        labels=[None] * n,
        metadata=[{} for _ in range(n)],
    )


class Scripted(RewardModel):
    """A reward whose ``score`` runs ``self.behaviour(batch)``; counts its calls."""

    name = "scripted"

    @dataclass
    class Config:
        dummy: int = field(default=0, metadata={"help": "Unused."})

    def __init__(self, behaviour: Any) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.calls: list[int] = []

    def score(self, batch: RewardInput) -> RewardOutput:
        self.calls.append(len(batch))
        return self.behaviour(batch)


def lengths(batch: RewardInput) -> RewardOutput:
    return RewardOutput(rewards=torch.tensor([float(len(r)) for r in batch.responses]))


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    reset_failure_log()


def reward_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "lightrft.reward" and r.levelno == level
    ]


# ---------------------------------------------------------------------- timeout
def test_a_batch_without_an_answer_in_time_fails_as_a_whole(caplog) -> None:
    release = threading.Event()

    def hang(batch: RewardInput) -> RewardOutput:
        release.wait(30)
        return lengths(batch)

    reward = Scripted(hang)
    try:
        with caplog.at_level(logging.ERROR, logger="lightrft.reward"):
            started = time.perf_counter()
            first = score_safely(reward, batch_of(3), failure_reward=-1.0, timeout_s=0.2)
            second = score_safely(reward, batch_of(2), failure_reward=-1.0, timeout_s=0.2)
            waited = time.perf_counter() - started
        hung = [t for t in threading.enumerate() if t.name == "lightrft-reward-scripted"]
        assert hung and all(t.daemon for t in hung)  # abandoned, never blocks the exit
    finally:
        release.set()
    assert waited < 2.0
    assert first.output.rewards.tolist() == [-1.0, -1.0, -1.0]
    assert first.failures == 3 and second.failures == 2
    assert first.errors == {
        "timeout": "no answer within reward.timeout_s=0.2 s for a batch of 3 samples"
    }
    messages = reward_records(caplog, logging.ERROR)
    assert len(messages) == 2  # once per occurrence, with the batch size and the timeout
    assert (
        "reward 'scripted': no answer within reward.timeout_s=0.2 s for a batch of 3"
        in (messages[0])
    )
    assert "batch of 2 samples" in messages[1]


def test_a_reward_answering_in_time_is_unchanged() -> None:
    reward = Scripted(lengths)
    result = score_safely(reward, batch_of(3), failure_reward=-1.0, timeout_s=5.0)
    assert result.output.rewards.tolist() == [1.0, 2.0, 3.0]
    assert result.failures == 0 and result.errors == {}


def test_an_error_inside_the_timed_call_is_isolated_as_without_timeout() -> None:
    def boom_on_two(batch: RewardInput) -> RewardOutput:
        if "xx" in batch.responses:
            raise RuntimeError("cannot score xx")
        return lengths(batch)

    result = score_safely(Scripted(boom_on_two), batch_of(3), failure_reward=0.5, timeout_s=5.0)
    assert result.output.rewards.tolist() == [1.0, 0.5, 3.0]
    assert result.errors == {"RuntimeError": "RuntimeError: cannot score xx"}


# ---------------------------------------------------------------------- whole-batch failures
def test_a_batch_failure_is_not_retried_one_sample_at_a_time(caplog) -> None:
    def endpoint_gone(batch: RewardInput) -> RewardOutput:
        raise BatchFailure("the judge's endpoint is gone", kind="endpoint")

    reward = Scripted(endpoint_gone)
    with caplog.at_level(logging.ERROR, logger="lightrft.reward"):
        first = score_safely(reward, batch_of(4), failure_reward=0.0)
        score_safely(reward, batch_of(4), failure_reward=0.0)
    assert reward.calls == [4, 4]  # one call per batch, no single-sample calls
    assert first.failures == 4 and first.errors == {"endpoint": "the judge's endpoint is gone"}
    messages = reward_records(caplog, logging.ERROR)
    assert len(messages) == 1  # said once
    assert "failed a whole batch of 4 samples (endpoint)" in messages[0]
    assert "not re-sent one sample at a time" in messages[0]


def test_sub_scores_of_the_wrong_length_are_said_once(caplog) -> None:
    def one_accuracy(batch: RewardInput) -> RewardOutput:
        out = lengths(batch)
        return RewardOutput(rewards=out.rewards, sub_scores={"accuracy": torch.ones(1)})

    reward = Scripted(one_accuracy)
    with caplog.at_level(logging.WARNING, logger="lightrft.reward"):
        result = score_safely(reward, batch_of(3), failure_reward=0.0)
        score_safely(reward, batch_of(3), failure_reward=0.0)
    # one at a time the sub-score has the right length: the scores survive
    assert result.output.rewards.tolist() == [1.0, 2.0, 3.0]
    assert result.output.sub_scores["accuracy"].tolist() == [1.0, 1.0, 1.0]
    assert result.failures == 0
    messages = reward_records(caplog, logging.WARNING)
    assert len(messages) == 1
    assert (
        "reward 'scripted' failed on a batch of 3 samples (ValueError: returned sub-score "
        "'accuracy' with 1 values for 3 samples; expected one per sample)"
    ) in messages[0]


# ---------------------------------------------------------------------- remote rewards
class Service:
    """A real HTTP server on localhost answering every POST with ``status`` and ``answer``
    after ``delay_s``; counts the samples of every request."""

    def __init__(self, status: int, answer: Any, delay_s: float = 0.0) -> None:
        self.requests: list[int] = []
        service = self

        class Answer(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.requests.append(len(body["responses"]))
                time.sleep(delay_s)
                data = json.dumps(answer(body) if callable(answer) else answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Service] = []

    def start(status: int, answer: Any, delay_s: float = 0.0) -> Service:
        started.append(Service(status, answer, delay_s))
        return started[-1]

    yield start
    for service in started:
        service.close()


def remote(url: str, **options: Any) -> RemoteReward:
    return RemoteReward(RemoteReward.Config(url=url, retry_backoff_s=0.01, **options))


def test_a_remote_404_fails_the_batch_once_without_a_request_per_sample(serve, caplog) -> None:
    service = serve(404, {"detail": "Not Found"})
    reward = remote(service.url, max_retries=3)
    with caplog.at_level(logging.ERROR, logger="lightrft.reward"):
        first = score_safely(reward, batch_of(5), failure_reward=-1.0)
        score_safely(reward, batch_of(5), failure_reward=-1.0)
    assert service.requests == [5, 5]  # one request per batch: no retries, no one-by-one
    assert first.failures == 5 and first.output.rewards.tolist() == [-1.0] * 5
    assert list(first.errors) == ["HTTP 404"]
    messages = reward_records(caplog, logging.ERROR)
    assert len(messages) == 1
    assert f"remote reward {service.url} answered HTTP 404 (Not Found)" in messages[0]
    assert "check reward.url" in messages[0]


def test_a_slow_remote_reward_is_cut_by_the_batch_timeout(serve) -> None:
    service = serve(200, lambda body: {"rewards": [1.0] * len(body["responses"])}, delay_s=1.0)
    result = score_safely(remote(service.url), batch_of(2), failure_reward=0.0, timeout_s=0.2)
    assert result.failures == 2 and list(result.errors) == ["timeout"]


# ---------------------------------------------------------------------- the run's watch
def test_the_watch_stops_after_n_consecutive_failing_steps() -> None:
    from lightrft_core.rewards.safe import SafeScore

    watch = RewardFailureWatch("judge", max_rate=1.0, max_steps=3)
    failed = SafeScore(RewardOutput(rewards=torch.zeros(4)), 4, {"HTTP 404": "gone"})
    watch.record(failed)
    watch.end_step(1, 4.0, 1.0)
    watch.end_step(2, 4.0, 1.0)
    watch.end_step(3, 3.0, 0.75)  # not every sample: the streak starts again
    watch.record(SafeScore(RewardOutput(rewards=torch.zeros(4)), 4, {"timeout": "slow"}))
    watch.end_step(4, 4.0, 1.0)
    watch.end_step(5, 4.0, 1.0)
    with pytest.raises(RewardFailureError) as caught:
        watch.end_step(6, 4.0, 1.0)
    assert str(caught.value).startswith(
        "reward 'judge' failed on 100% of the samples of step 6 and on at least "
        "reward.max_failure_rate=1 of them for 3 consecutive steps; first error (timeout): slow."
    )
    assert watch.summary() == (
        "reward failures: 23 samples got reward.failure_reward, on 6 of 6 steps (worst step: "
        "100% failed); first errors: HTTP 404: gone; timeout: slow"
    )


def test_the_watch_rate_and_steps_are_configurable() -> None:
    half = RewardFailureWatch("r", max_rate=0.5, max_steps=2)
    half.end_step(1, 2.0, 0.5)
    with pytest.raises(RewardFailureError, match="errors were logged by another rank"):
        half.end_step(2, 2.0, 0.5)
    never = RewardFailureWatch("r", max_rate=1.0, max_steps=0)
    for step in range(1, 10):
        never.end_step(step, 4.0, 1.0)
    assert RewardFailureWatch("r", 1.0, 3).summary() is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("reward.timeout_s=0", "reward.timeout_s must be a number of seconds > 0 or null"),
        ("reward.timeout_s=-5", "reward.timeout_s must be a number of seconds > 0 or null"),
        ("reward.max_failure_rate=0", "reward.max_failure_rate must be in (0, 1]"),
        ("reward.max_failure_rate=1.5", "reward.max_failure_rate must be in (0, 1]"),
        ("reward.max_failure_steps=-1", "reward.max_failure_steps must be >= 0"),
    ],
)
def test_the_options_are_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        load_config(None, [override])


# ---------------------------------------------------------------------- lightrft train
def train(tmp_path: Path, model: Path, prompts: Path, *overrides: str) -> Any:
    args = [
        "train",
        "--plugin",
        "grpo",
        f"run.output_dir={tmp_path / 'run'}",
        f"data.train_path={prompts}",
        "data.apply_chat_template=false",
        f"model.path={model}",
        "engine.n_samples_per_prompt=2",
        "engine.max_new_tokens=4",
        "trainer.max_steps=5",
        "trainer.prompts_per_step=2",
        "trainer.micro_batch_size=4",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *overrides,
    ]
    return CliRunner().invoke(app, args)


def metrics_of(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_run_whose_remote_reward_answers_404_stops_with_one_error(
    serve, fast_tiny_model_dir, letter_prompts, tmp_path
) -> None:
    service = serve(404, {"detail": "Not Found"})
    result = train(
        tmp_path,
        fast_tiny_model_dir,
        letter_prompts,
        "reward.name=remote",
        f"reward.url={service.url}",
    )
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(
        "error: reward 'remote' failed on 100% of the samples of step 3 and on at least "
        "reward.max_failure_rate=1 of them for 3 consecutive steps; first error (HTTP 404): "
        f"remote reward {service.url} answered HTTP 404 (Not Found)"
    ), error
    assert error.endswith("set reward.max_failure_steps=0 to train on the failure reward anyway")
    assert service.requests == [4, 4, 4]  # one request per step, never one per sample
    assert [m["reward/failures"] for m in metrics_of(tmp_path)] == [4.0, 4.0, 4.0]
    assert not (tmp_path / "run" / "final").exists()


def test_a_run_with_a_timed_out_reward_counts_the_failures_and_summarises_them(
    serve, fast_tiny_model_dir, letter_prompts, tmp_path
) -> None:
    service = serve(200, lambda body: {"rewards": [1.0] * len(body["responses"])}, delay_s=1.0)
    result = train(
        tmp_path,
        fast_tiny_model_dir,
        letter_prompts,
        "trainer.max_steps=2",
        "reward.name=remote",
        f"reward.url={service.url}",
        "reward.timeout_s=0.1",
    )
    assert result.exit_code == 0, result.output
    assert [m["reward/failures"] for m in metrics_of(tmp_path)] == [4.0, 4.0]
    assert [m["reward/failure_rate"] for m in metrics_of(tmp_path)] == [1.0, 1.0]
    assert (
        "reward failures: 8 samples got reward.failure_reward, on 2 of 2 steps (worst step: "
        "100% failed); first errors: timeout: no answer within reward.timeout_s=0.1 s for a "
        "batch of 4 samples"
    ) in " ".join(result.output.split())
