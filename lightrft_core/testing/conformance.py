"""Conformance tests a plugin's own tests subclass, one base class per interface.

Usage in a plugin's ``tests/test_conformance.py``::

    from lightrft_core.testing import AlgorithmConformance
    from my_plugin.algo import MyAlgorithm

    class TestMyAlgorithm(AlgorithmConformance):
        algorithm_cls = MyAlgorithm

Override ``make_*`` methods to build components that need arguments. The base classes are
not collected by pytest themselves (their names do not start with ``Test``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..interfaces import (
    MODALITY_PARAMETERS,
    Actor,
    AdvantageInput,
    Algorithm,
    AlgorithmContext,
    Component,
    InferenceEngine,
    LossScale,
    ModelPatch,
    PolicyLossInput,
    PolicyLossOutput,
    RewardInput,
    RewardModel,
    SamplingParams,
    StrategyBase,
    TrackedRun,
    Tracker,
    component_class_problems,
)
from .training import ThreadGroup


class _ComponentChecks:
    component_base: ClassVar[type[Component]]

    def component_class(self) -> type[Component]:
        raise NotImplementedError

    def test_class_is_registrable(self) -> None:
        assert component_class_problems(self.component_class(), self.component_base) == []

    def test_every_config_field_has_help(self) -> None:
        config_cls = self.component_class().Config
        undocumented = [
            f.name for f in dataclasses.fields(config_cls) if not f.metadata.get("help")
        ]
        assert undocumented == [], f"Config fields without metadata={{'help': ...}}: {undocumented}"

    def test_default_config_constructs(self) -> None:
        cls = self.component_class()
        assert isinstance(cls.Config(), cls.Config)


# ---------------------------------------------------------------------- algorithm
def _options_id(options: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "configured"


class AlgorithmConformance(_ComponentChecks):
    """Checks advantages and loss of an ``Algorithm`` on seeded random inputs, set up as the
    loop sets it up (``Algorithm.setup`` with an ``AlgorithmContext``).

    The gradient-invariance checks run on every entry of ``loss_variants`` (``Config``
    options merged over ``config_options``): the gradient of the policy loss of one batch is
    the same in one micro-batch, in ``micro_batches`` micro-batches of gradient accumulation,
    and on 2 data-parallel ranks (threads with a real all-reduce, each rank with its own
    replica of the parameters, gradients averaged as the strategies do).
    """

    component_base = Algorithm
    algorithm_cls: ClassVar[type[Algorithm]]
    #: ``Config`` options of the configuration under test.
    config_options: ClassVar[Mapping[str, Any]] = {}
    #: Option sets, each merged over ``config_options``, the invariance checks also run on
    #: (e.g. every ``loss_aggregation``); ``{}`` is ``config_options`` alone.
    loss_variants: ClassVar[Sequence[Mapping[str, Any]]] = ({},)
    group_size: ClassVar[int] = 4
    num_groups: ClassVar[int] = 2
    seq_len: ClassVar[int] = 6
    micro_batches: ClassVar[int] = 4

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Runs each test that takes ``loss_options`` once per entry of ``loss_variants``."""
        if "loss_options" in metafunc.fixturenames:
            metafunc.parametrize("loss_options", self.loss_variants, ids=_options_id)

    def component_class(self) -> type[Component]:
        return self.algorithm_cls

    def make_algorithm(self, **options: Any) -> Algorithm:
        """The algorithm of ``config_options`` updated with ``options``, not yet set up."""
        return self.algorithm_cls(self.algorithm_cls.Config(**{**self.config_options, **options}))

    def make_context(
        self, world_size: int = 1, all_reduce: Callable[..., torch.Tensor] | None = None
    ) -> AlgorithmContext:
        """What the loop passes to ``setup``: the response length is ``seq_len``."""
        return AlgorithmContext(
            max_new_tokens=self.seq_len,
            group_size=self.group_size,
            world_size=world_size,
            all_reduce=all_reduce,
        )

    def _set_up(
        self,
        options: Mapping[str, Any] | None = None,
        world_size: int = 1,
        all_reduce: Callable[..., torch.Tensor] | None = None,
    ) -> Algorithm:
        algo = self.make_algorithm(**(options or {}))
        algo.setup(self.make_context(world_size, all_reduce))
        return algo

    def _inputs(self, rewards: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        b, t = self.group_size * self.num_groups, self.seq_len
        mask = torch.ones(b, t, dtype=torch.bool)
        for row in range(b):  # responses of different lengths, left part is the prompt
            mask[row, : 1 + row % 3] = False
        old = -torch.rand(b, t, generator=g) - 0.1
        inputs = {
            "rewards": torch.randint(0, 3, (b,), generator=g).float()
            if rewards is None
            else rewards,
            "mask": mask,
            "old": old,
            "ref": old + 0.05 * torch.randn(b, t, generator=g),
            "new": old + 0.1 * torch.randn(b, t, generator=g),
            "values": torch.randn(b, t, generator=g),
        }
        g2 = torch.Generator().manual_seed(1)
        inputs["entropy"] = torch.rand(b, t, generator=g2) * 2
        inputs["features"] = torch.randn(b, t, generator=g2)  # d log_probs / d θ per token
        return inputs

    def _advantages(self, algo: Algorithm, x: dict[str, torch.Tensor]) -> torch.Tensor:
        out = algo.compute_advantages(
            AdvantageInput(
                rewards=x["rewards"],
                action_mask=x["mask"],
                group_size=self.group_size,
                old_log_probs=x["old"],
                ref_log_probs=x["ref"],
                values=x["values"] if algo.needs_critic() else None,
                kl_coef=algo.initial_kl_coef(),
            )
        )
        return out.advantages

    def _loss(
        self,
        algo: Algorithm,
        x: dict[str, torch.Tensor],
        adv: torch.Tensor,
        log_probs: torch.Tensor,
        rows: slice,
        scale: LossScale,
        entropy: torch.Tensor | None = None,
    ) -> PolicyLossOutput:
        return algo.policy_loss(
            PolicyLossInput(
                log_probs=log_probs[rows],
                old_log_probs=x["old"][rows],
                advantages=adv[rows],
                action_mask=x["mask"][rows],
                scale=scale,
                ref_log_probs=x["ref"][rows],
                entropy=x["entropy"][rows] if entropy is None else entropy[rows],
                kl_coef=algo.initial_kl_coef(),
            )
        )

    def _row_slices(self, start: int, stop: int, parts: int) -> list[slice]:
        size = (stop - start) // parts
        return [slice(i, i + size) for i in range(start, stop, size)]

    def test_advantages_have_token_shape_and_are_zero_outside_the_mask(self) -> None:
        algo, x = self._set_up(), self._inputs()
        adv = self._advantages(algo, x)
        assert adv.shape == x["mask"].shape
        assert torch.isfinite(adv).all()
        assert (adv[~x["mask"]] == 0).all()

    def test_equal_rewards_give_zero_advantage_not_nan(self) -> None:
        algo = self._set_up()
        if not algo.requires_groups:
            return
        n = self.group_size * self.num_groups
        x = self._inputs(rewards=torch.full((n,), 0.7))
        x["ref"] = x["old"].clone()
        adv = self._advantages(algo, x)
        assert torch.isfinite(adv).all()
        assert torch.allclose(adv, torch.zeros_like(adv), atol=1e-6)

    def test_loss_is_a_finite_scalar_with_gradient(self) -> None:
        algo, x = self._set_up(), self._inputs()
        adv = self._advantages(algo, x)
        log_probs = x["new"].clone().requires_grad_(True)
        scale = LossScale(int(x["mask"].sum()), x["mask"].shape[0])
        out = self._loss(algo, x, adv, log_probs, slice(None), scale)
        assert out.loss.shape == ()
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert log_probs.grad is not None and log_probs.grad.abs().sum() > 0
        assert (log_probs.grad[~x["mask"]] == 0).all(), "masked tokens must get no gradient"
        for name, value in out.metrics.items():
            assert not value.requires_grad, f"metric {name} must be detached"

    def test_gradient_is_the_same_with_micro_batches(self, loss_options: dict[str, Any]) -> None:
        # The per-token gradients of log_probs and entropy (leaves), and the summed loss.
        algo, x = self._set_up(loss_options), self._inputs()
        adv = self._advantages(algo, x)
        n = x["mask"].shape[0]
        scale = LossScale(int(x["mask"].sum()), n)

        def accumulate(row_slices: list[slice]) -> tuple[torch.Tensor, torch.Tensor, float]:
            log_probs = x["new"].clone().requires_grad_(True)
            entropy = x["entropy"].clone().requires_grad_(True)
            total = 0.0
            for rows in row_slices:
                loss = self._loss(algo, x, adv, log_probs, rows, scale, entropy).loss
                loss.backward()  # gradients accumulate over micro-batches
                total += float(loss.detach())
            assert log_probs.grad is not None
            grad_h = torch.zeros_like(entropy) if entropy.grad is None else entropy.grad
            return log_probs.grad, grad_h, total

        lp_whole, h_whole, loss_whole = accumulate([slice(0, n)])
        lp_split, h_split, loss_split = accumulate(self._row_slices(0, n, self.micro_batches))
        assert lp_whole.abs().sum() > 0, "no gradient on the kit's data: choose other options"
        assert (lp_whole[~x["mask"]] == 0).all(), "masked tokens must get no gradient"
        torch.testing.assert_close(lp_split, lp_whole, atol=1e-6, rtol=0)
        torch.testing.assert_close(h_split, h_whole, atol=1e-6, rtol=0)
        assert abs(loss_split - loss_whole) <= 1e-5 * max(1.0, abs(loss_whole))

    def test_gradient_is_the_same_on_2_ranks(self, loss_options: dict[str, Any]) -> None:
        # A parameter θ [T] shared by every token: log_probs = new + θ·features and entropy =
        # base + θ·features. Each rank holds a replica of θ, sets up its own algorithm with
        # world_size 2 and the group's all_reduce, and accumulates its half of the batch in
        # micro-batches; the strategy averages the replicas' gradients.
        x = self._inputs()
        adv = self._advantages(self._set_up(loss_options), x)
        n = x["mask"].shape[0]
        tokens = int(x["mask"].sum())

        def theta_grad(
            algo: Algorithm, row_slices: list[slice], scale: LossScale
        ) -> tuple[torch.Tensor, float]:
            theta = torch.zeros(self.seq_len, requires_grad=True)
            log_probs = x["new"] + theta * x["features"]
            entropy = x["entropy"] + theta * x["features"]
            total = 0.0
            for rows in row_slices:
                loss = self._loss(algo, x, adv, log_probs, rows, scale, entropy).loss
                loss.backward(retain_graph=True)
                total += float(loss.detach())
            assert theta.grad is not None
            return theta.grad, total

        one = self._set_up(loss_options)
        full, loss_full = theta_grad(one, [slice(0, n)], LossScale(tokens, n, world_size=1))

        def rank(r: int) -> Callable[[Callable[..., torch.Tensor]], Any]:
            def run(all_reduce: Callable[..., torch.Tensor]) -> Any:
                algo = self._set_up(loss_options, world_size=2, all_reduce=all_reduce)
                rows = self._row_slices(r * n // 2, (r + 1) * n // 2, self.micro_batches // 2)
                return theta_grad(algo, rows, LossScale(tokens, n, world_size=2))

            return run

        (grad0, loss0), (grad1, loss1) = ThreadGroup(2).run([rank(0), rank(1)])
        assert full.abs().sum() > 0, "no gradient on the kit's data: choose other options"
        torch.testing.assert_close((grad0 + grad1) / 2, full, atol=1e-6, rtol=0)
        assert abs((loss0 + loss1) / 2 - loss_full) <= 1e-5 * max(1.0, abs(loss_full))


# ---------------------------------------------------------------------- strategy
class StrategyConformance(_ComponentChecks):
    """Trains a tiny regression model through every strategy method (one process)."""

    component_base = StrategyBase
    strategy_cls: ClassVar[type[StrategyBase]]

    def component_class(self) -> type[Component]:
        return self.strategy_cls

    def make_strategy(self) -> StrategyBase:
        strategy = self.strategy_cls(self.strategy_cls.Config())
        strategy.setup_distributed()
        return strategy

    @staticmethod
    def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        model = torch.nn.Linear(3, 1)
        x = torch.randn(16, 3, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        return model, x, y

    def test_rank_and_world_size(self) -> None:
        s = self.make_strategy()
        assert 0 <= s.rank < s.world_size
        assert s.is_rank_0 == (s.rank == 0)

    def test_training_steps_reduce_the_loss(self) -> None:
        s = self.make_strategy()
        model, x, y = self._problem()
        model, opt, _ = s.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        assert opt is not None
        losses = []
        for _ in range(20):
            for rows in (slice(0, 8), slice(8, 16)):  # two micro-batches
                loss = ((model(x[rows].to(s.device)) - y[rows].to(s.device)) ** 2).mean() / 2
                s.backward(loss, model)
            losses.append(float(loss.detach()))
            norm = s.optimizer_step(model, opt, max_grad_norm=1.0)
            assert norm >= 0
        assert losses[-1] < losses[0] * 0.5

    def test_clipping_bounds_the_update(self) -> None:
        s = self.make_strategy()
        model, x, y = self._problem()
        model, opt, _ = s.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
        assert opt is not None
        before = [p.detach().clone() for p in s.unwrap(model).parameters()]
        s.backward(((model(x) - 100 * y) ** 2).mean(), model)
        norm = s.optimizer_step(model, opt, max_grad_norm=0.01)
        after = list(s.unwrap(model).parameters())
        step = torch.sqrt(
            sum(
                (((a.detach() - b) ** 2).sum() for a, b in zip(after, before, strict=True)),
                torch.tensor(0.0),
            )
        )
        assert norm > 0.01
        assert float(step) <= 0.01 + 1e-5

    def test_all_reduce_sum_counts_ranks(self) -> None:
        s = self.make_strategy()
        assert float(s.all_reduce(torch.tensor(1.0), op="sum")) == s.world_size
        assert s.all_gather(torch.ones(2)).shape == (2 * s.world_size,)

    def test_checkpoint_round_trip(self, tmp_path: Any) -> None:
        s = self.make_strategy()
        model, x, y = self._problem()
        model, opt, _ = s.prepare(model, torch.optim.Adam(model.parameters(), lr=0.1))
        assert opt is not None
        s.backward(((model(x) - y) ** 2).mean(), model)
        s.optimizer_step(model, opt)
        s.save_checkpoint(tmp_path / "ckpt", model=model, optimizer=opt, client_state={"step": 7})
        saved = {k: v.clone() for k, v in s.unwrap(model).state_dict().items()}
        fresh, _, _ = self._problem()
        fresh, fresh_opt, _ = s.prepare(fresh, torch.optim.Adam(fresh.parameters(), lr=0.1))
        assert fresh_opt is not None
        state = s.load_checkpoint(tmp_path / "ckpt", model=fresh, optimizer=fresh_opt)
        assert state["step"] == 7
        for k, v in s.unwrap(fresh).state_dict().items():
            assert torch.equal(v, saved[k]), k
        assert fresh_opt.state_dict()["state"], "optimizer state must be restored"


# ---------------------------------------------------------------------- engine
class EngineConformance(_ComponentChecks):
    """Checks the shape of ``generate`` outputs and that ``update_weights`` is accepted."""

    component_base = InferenceEngine
    engine_cls: ClassVar[type[InferenceEngine]]
    prompts: ClassVar[list[list[int]]] = [[1, 2, 3], [4, 5]]

    def component_class(self) -> type[Component]:
        return self.engine_cls

    def make_engine(self) -> InferenceEngine:
        return self.engine_cls(self.engine_cls.Config())

    def make_weights(self, engine: InferenceEngine) -> list[tuple[str, torch.Tensor]] | None:
        """Named tensors ``update_weights`` accepts; ``None`` skips that check."""
        return []

    def test_generate_returns_n_samples_per_prompt_in_order(self) -> None:
        engine = self.make_engine()
        params = SamplingParams(n=3, max_new_tokens=4, seed=0)
        outputs = engine.generate(self.prompts, params)
        assert [o.prompt_index for o in outputs] == [0, 0, 0, 1, 1, 1]
        for o in outputs:
            assert 1 <= len(o.token_ids) <= 4
            assert all(isinstance(t, int) for t in o.token_ids)
            assert len(o.log_probs) == len(o.token_ids)
            assert all(lp <= 1e-6 for lp in o.log_probs)
            assert o.finish_reason in ("stop", "length")

    def test_no_prompts_give_no_outputs(self) -> None:
        engine = self.make_engine()
        assert engine.generate([], SamplingParams(n=2, max_new_tokens=4, seed=0)) == []

    def test_stop_tokens_end_a_response(self) -> None:
        engine = self.make_engine()
        first = engine.generate(self.prompts[:1], SamplingParams(max_new_tokens=4, seed=0))[0]
        stop = first.token_ids[0]
        out = engine.generate(
            self.prompts[:1], SamplingParams(max_new_tokens=4, seed=0, stop_token_ids=[stop])
        )[0]
        assert out.token_ids == [stop]
        assert out.finish_reason == "stop"

    def test_update_weights_accepts_named_tensors(self) -> None:
        engine = self.make_engine()
        weights = self.make_weights(engine)
        if weights is not None:
            engine.update_weights(iter(weights))
            engine.sleep()
            engine.wake_up()

    def test_shares_model_is_a_declared_bool(self) -> None:
        """The loop skips the weight sync exactly when ``shares_model`` is True: it must be
        a plain bool (an engine with its own copy says False)."""
        assert isinstance(self.make_engine().shares_model, bool)


# ---------------------------------------------------------------------- reward
class RewardConformance(_ComponentChecks):
    """Checks that a reward model returns one finite float32 reward per sample."""

    component_base = RewardModel
    reward_cls: ClassVar[type[RewardModel]]

    def component_class(self) -> type[Component]:
        return self.reward_cls

    def make_reward(self) -> RewardModel:
        return self.reward_cls(self.reward_cls.Config())

    def make_batch(self) -> RewardInput:
        return RewardInput(
            prompts=["What is 2+3?", "What is 7*6?", "Name a colour."],
            responses=["The answer is \\boxed{5}", "42", ""],
            labels=["5", "42", None],
        )

    def test_one_finite_reward_per_sample(self) -> None:
        batch = self.make_batch()
        out = self.make_reward().score(batch)
        assert out.rewards.shape == (len(batch),)
        assert out.rewards.dtype == torch.float32
        assert torch.isfinite(out.rewards).all()
        for name, scores in out.sub_scores.items():
            assert scores.shape == (len(batch),), name


# ---------------------------------------------------------------------- actor
class ActorConformance(_ComponentChecks):
    """Checks log-prob shapes, ranges, gradients and row independence of an ``Actor``."""

    component_base = Actor
    actor_cls: ClassVar[type[Actor]]
    vocab_size: ClassVar[int] = 32

    def component_class(self) -> type[Component]:
        return self.actor_cls

    def make_actor(self) -> Actor:
        return self.actor_cls(self.actor_cls.Config())

    def make_sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        sequences = torch.randint(1, self.vocab_size, (3, 7), generator=g)
        mask = torch.ones_like(sequences)
        return sequences, mask

    def test_log_probs_shape_and_range(self) -> None:
        actor = self.make_actor()
        seqs, mask = self.make_sequences()
        out = actor(seqs, mask, return_entropy=True)
        assert out.log_probs.shape == (seqs.shape[0], seqs.shape[1] - 1)
        assert out.log_probs.dtype == torch.float32
        assert (out.log_probs <= 1e-6).all()
        assert out.entropy is not None and out.entropy.shape == out.log_probs.shape
        assert (out.entropy >= -1e-5).all()

    def test_rows_are_independent(self) -> None:
        actor = self.make_actor()
        seqs, mask = self.make_sequences()
        with torch.no_grad():
            batched = actor(seqs, mask).log_probs
            single = actor(seqs[1:2], mask[1:2]).log_probs
        assert torch.allclose(batched[1:2], single, atol=1e-5)

    def test_gradient_flows_to_parameters(self) -> None:
        actor = self.make_actor()
        seqs, mask = self.make_sequences()
        actor(seqs, mask).log_probs.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())

    def test_supported_parameters_match_the_modality(self) -> None:
        actor = self.make_actor()
        assert actor.get_supported_parameters() <= MODALITY_PARAMETERS[actor.modality]

    def test_weights_for_sync_cover_the_model(self) -> None:
        """``named_weights_for_sync`` lists every tensor of ``hf_model()``'s state dict (an
        adapter may be merged away, never a base weight left out) and they follow training:
        an engine fed with them is never left on stale weights."""
        actor = self.make_actor()
        model = actor.hf_model()
        assert isinstance(model, torch.nn.Module)
        synced = {name: t.clone() for name, t in actor.named_weights_for_sync()}
        expected = {  # base weights under their plain names (a peft wrapper's prefix dropped)
            name.replace(".base_layer.", ".").removeprefix("base_model.model.")
            for name in model.state_dict()
            if not any(part.startswith("lora_") for part in name.split("."))
        }
        left_out = sorted(expected - set(synced))
        assert not left_out, f"named_weights_for_sync leaves out weights of hf_model(): {left_out}"
        assert all(not t.requires_grad for t in synced.values())
        seqs, mask = self.make_sequences()
        optimizer = torch.optim.SGD(actor.parameters(), lr=1.0)
        actor(seqs, mask).log_probs.sum().backward()
        optimizer.step()
        after = dict(actor.named_weights_for_sync())
        assert any(not torch.equal(after[name], synced[name]) for name in synced), (
            "a training step changed no synced weight"
        )


# ---------------------------------------------------------------------- patch
class PatchConformance(_ComponentChecks):
    """Checks that ``apply``/``revert`` are idempotent."""

    component_base = ModelPatch
    patch_cls: ClassVar[type[ModelPatch]]

    def component_class(self) -> type[Component]:
        return self.patch_cls

    def make_patch(self) -> ModelPatch:
        return self.patch_cls(self.patch_cls.Config())

    def test_apply_and_revert_are_idempotent(self) -> None:
        patch = self.make_patch()
        patch.revert()
        patch.apply()
        patch.apply()
        patch.revert()
        patch.revert()


# ---------------------------------------------------------------------- tracker
class TrackerConformance(_ComponentChecks):
    """Runs a tracker through a whole run in a temporary folder: ``start`` (the
    configuration), metrics of two steps, a samples table, the summary and ``close``."""

    component_base = Tracker
    tracker_cls: ClassVar[type[Tracker]]

    def component_class(self) -> type[Component]:
        return self.tracker_cls

    def make_tracker(self) -> Tracker:
        return self.tracker_cls(self.tracker_cls.Config())

    def test_records_a_whole_run(self, tmp_path: Any) -> None:
        tracker = self.make_tracker()
        config = {"trainer.learning_rate": 0.001, "logging.trackers": [self.tracker_cls.name]}
        tracker.start(TrackedRun("0123456789ab", "conformance", tmp_path, config))
        tracker.log_metrics(1, {"reward/mean": 0.25, "time/step": 1.5})
        tracker.log_samples(1, [{"prompt": "1+1=", "response": "2", "reward": 1.0}])
        tracker.log_metrics(2, {"reward/mean": 0.5, "time/step": 1.25})
        tracker.log_summary({"reward/mean/last": 0.5, "reward/mean/best": 0.5})
        tracker.close()
