"""``reward.name: remote`` against a real HTTP server on localhost (a thread of this test):
the protocol, chunking, the key header, retries, refusals, malformed answers, and what the
loop's failure handling makes of a service that is down."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from lightrft_core.interfaces import RewardInput
from lightrft_core.rewards import RemoteReward, RemoteRewardError, score_safely
from lightrft_core.testing import RewardConformance

Handler = Callable[[dict[str, Any], dict[str, str]], tuple[int, Any]]


class Service:
    """A real HTTP server whose answers come from ``handler(body, headers) -> (status,
    json)``; every request body and its headers are recorded."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        service = self

        class Answer(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                service.requests.append(body)
                service.headers.append(dict(self.headers))
                status, answer = service.handler(body, dict(self.headers))
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Service]]:
    started: list[Service] = []

    def start(handler: Handler) -> Service:
        started.append(Service(handler))
        return started[-1]

    yield start
    for service in started:
        service.close()


def length_reward(body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    """Reward = response length; accuracy = 1 when the response equals the label."""
    rewards = [float(len(r)) for r in body["responses"]]
    hits = [float(r == lab) for r, lab in zip(body["responses"], body["labels"], strict=True)]
    return 200, {"rewards": rewards, "sub_scores": {"accuracy": hits}}


def batch(n: int) -> RewardInput:
    return RewardInput(
        prompts=[f"p{i}" for i in range(n)],
        responses=["x" * i for i in range(n)],
        labels=["xx"] * n,
        metadata=[{"row": i} for i in range(n)],
    )


def remote(url: str, **options: Any) -> RemoteReward:
    return RemoteReward(RemoteReward.Config(url=url, retry_backoff_s=0.01, **options))


def test_scores_come_from_the_service_in_order_and_in_chunks(serve) -> None:
    service = serve(length_reward)
    out = remote(service.url, batch_size=2).score(batch(5))
    torch.testing.assert_close(out.rewards, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(out.sub_scores["accuracy"], torch.tensor([0.0, 0, 1, 0, 0]))
    assert [len(r["responses"]) for r in service.requests] == [2, 2, 1]  # 5 samples, chunks of 2
    first = service.requests[0]
    assert first == {
        "prompts": ["p0", "p1"],
        "responses": ["", "x"],
        "labels": ["xx", "xx"],
        "metadata": [{"row": 0}, {"row": 1}],
    }


def test_the_key_is_read_from_the_environment(serve, monkeypatch) -> None:
    service = serve(length_reward)
    monkeypatch.setenv("MY_REWARD_KEY", "s3cret")
    remote(service.url, api_key_env="MY_REWARD_KEY").score(batch(1))
    assert service.headers[0]["Authorization"] == "Bearer s3cret"
    monkeypatch.delenv("MY_REWARD_KEY")
    with pytest.raises(ValueError, match="MY_REWARD_KEY.*not set"):
        remote(service.url, api_key_env="MY_REWARD_KEY")


def test_a_busy_service_is_retried(serve) -> None:
    answers = iter([(503, {"error": "busy"}), (429, {"error": "slow down"})])

    def flaky(body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
        return next(answers, None) or length_reward(body, headers)

    service = serve(flaky)
    out = remote(service.url, max_retries=2).score(batch(3))
    torch.testing.assert_close(out.rewards, torch.tensor([0.0, 1.0, 2.0]))
    assert len(service.requests) == 3  # two refusals, then the answer


def test_a_refusal_raises_at_once_with_the_status_and_the_body(serve) -> None:
    service = serve(lambda body, headers: (400, {"error": "response too long"}))
    with pytest.raises(RemoteRewardError, match="HTTP 400.*response too long"):
        remote(service.url, max_retries=3).score(batch(2))
    assert len(service.requests) == 1  # a 4xx is not retried


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"scores": [1.0, 2.0]}, "expected a JSON object with 'rewards'"),
        ({"rewards": [1.0]}, "'rewards' has 1 values for 2 samples"),
        ({"rewards": [1.0, "high"]}, "holds 'high', not a number"),
        ({"rewards": [1.0, 2.0], "sub_scores": {"acc": [1.0]}}, "sub-score 'acc' has 1 values"),
        (b"<html>oops</html>", "not JSON"),
    ],
)
def test_a_malformed_answer_is_an_error(serve, answer: Any, match: str) -> None:
    service = serve(lambda body, headers: (200, answer))
    with pytest.raises(RemoteRewardError, match=match):
        remote(service.url).score(batch(2))


def test_null_rewards_are_failed_samples(serve) -> None:
    service = serve(lambda body, headers: (200, {"rewards": [1.0, None, 0.5]}))
    safe = score_safely(remote(service.url), batch(3), failure_reward=-1.0)
    torch.testing.assert_close(safe.output.rewards, torch.tensor([1.0, -1.0, 0.5]))
    assert safe.failures == 1


def test_a_service_that_is_down_fails_its_samples_without_a_request_storm(serve) -> None:
    # 503 forever: the first chunk is tried 1 + max_retries times, then the whole batch gets
    # failure_reward; neither the other chunk nor single samples are sent.
    service = serve(lambda body, headers: (503, {"error": "down"}))
    safe = score_safely(remote(service.url, batch_size=4, max_retries=1), batch(8), 0.0)
    assert safe.failures == 8
    torch.testing.assert_close(safe.output.rewards, torch.zeros(8))
    assert len(service.requests) == 2  # 1 chunk x (1 + 1 retry)
    assert list(safe.errors) == ["unavailable"]


def test_an_unreachable_service_fails_its_samples(serve) -> None:
    service = serve(length_reward)
    url = service.url
    service.close()  # nothing listens on that port any more
    reward = remote(url, max_retries=1, request_timeout_s=2.0)
    safe = score_safely(reward, batch(3), failure_reward=0.0)
    assert safe.failures == 3
    assert list(safe.errors) == ["unavailable"]
    assert "unavailable after 2 attempts (URLError" in safe.errors["unavailable"]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="needs reward.url"):
        RemoteReward()
    with pytest.raises(ValueError, match="must start with http"):
        RemoteReward.Config(url="localhost:8000")
    for options, match in (
        ({"batch_size": 0}, "batch_size"),
        ({"request_timeout_s": 0.0}, "request_timeout_s"),
        ({"max_retries": -1}, "max_retries"),
        ({"retry_backoff_s": -1.0}, "retry_backoff_s"),
    ):
        with pytest.raises(ValueError, match=match):
            RemoteReward.Config(url="http://x", **options)


class TestRemoteRewardConformance(RewardConformance):
    reward_cls = RemoteReward

    @pytest.fixture(autouse=True)
    def _service(self, serve) -> None:
        self.service = serve(length_reward)

    def make_reward(self) -> RemoteReward:
        return remote(self.service.url)


def test_the_loop_learns_from_a_remote_reward(serve, tiny_model_dir, tmp_path) -> None:
    """The letter task (reward: the share of 'a' in the response), scored by the service:
    one request per step with every sample of the step, and the reward rises."""
    import lightrft_plugin_grpo.plugin
    from lightrft_core.config import load_config
    from lightrft_core.plugins import PluginManager
    from lightrft_core.trainer.rl import RLTrainer

    def share_of_a(body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
        rewards = [r.count("a") / max(1, len(r)) for r in body["responses"]]
        return 200, {"rewards": rewards, "sub_scores": {"accuracy": [r > 0.5 for r in rewards]}}

    service = serve(share_of_a)
    rows = [{"prompt": f"say a{i}:", "answer": "a"} for i in range(32)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_grpo.plugin, name="grpo")
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path / 'run'}",
            "run.seed=3",
            f"data.train_path={prompts}",
            "data.apply_chat_template=false",
            f"model.path={tiny_model_dir}",
            "engine.n_samples_per_prompt=4",
            "engine.max_new_tokens=6",
            "reward.name=remote",
            f"reward.url={service.url}",
            "trainer.max_steps=25",
            "trainer.prompts_per_step=4",
            "trainer.micro_batch_size=8",
            "trainer.learning_rate=3e-3",
            "trainer.max_grad_norm=1.0",
            "logging.tensorboard=false",
        ],
        manager=pm,
    )
    history = RLTrainer(cfg, pm).train().history
    assert [len(r["responses"]) for r in service.requests] == [16] * 25
    rewards = [r["reward/mean"] for r in history]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards
    assert all(r["reward/failures"] == 0 for r in history)
