"""The core's strategy conformance checks, run in this process as a group of one (the
strategy creates a one-rank gloo group when it is not launched by torchrun)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from lightrft_core.interfaces import StrategyBase
from lightrft_core.testing import StrategyConformance
from lightrft_plugin_deepspeed.strategy import DeepSpeedStrategy

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module", autouse=True)
def _one_rank_group():
    """The process group (and the launcher variables the strategy sets for it) live while
    this module runs and are gone afterwards, so that no other test finds them."""
    import torch.distributed as dist

    assert not dist.is_initialized(), "another test left a process group behind"
    saved = {
        key: os.environ.get(key)
        for key in (*LAUNCHER_VARIABLES, "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR")
    }
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / "build" / "torch_extensions"))
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class TestDeepSpeedConformance(StrategyConformance):
    strategy_cls = DeepSpeedStrategy

    def make_strategy(self) -> StrategyBase:
        strategy = DeepSpeedStrategy(DeepSpeedStrategy.Config(zero_stage=2))
        strategy.setup_distributed()
        return strategy

    def test_checkpoint_round_trip(self, tmp_path: Any) -> None:
        """The base check, except that the optimizer state is read from the torch optimizer
        inside DeepSpeed's ZeRO optimizer (whose own ``state_dict()`` has no ``"state"``)."""
        s = self.make_strategy()
        model, x, y = self._problem()
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        model, opt, _ = s.prepare(model, opt)
        s.backward(((model(x) - y) ** 2).mean(), model)
        s.optimizer_step(model, opt)
        s.save_checkpoint(tmp_path / "ckpt", model=model, optimizer=opt, client_state={"step": 7})
        saved = {k: v.clone() for k, v in s.unwrap(model).state_dict().items()}
        saved_moments = adam_moments(opt)
        fresh, _, _ = self._problem()
        fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
        fresh, fresh_opt, _ = s.prepare(fresh, fresh_opt)
        state = s.load_checkpoint(tmp_path / "ckpt", model=fresh, optimizer=fresh_opt)
        assert state["step"] == 7
        for k, v in s.unwrap(fresh).state_dict().items():
            assert torch.equal(v, saved[k]), k
        restored = adam_moments(fresh_opt)
        assert restored, "optimizer state must be restored"
        for key, tensor in saved_moments.items():
            assert torch.equal(restored[key], tensor), key


def adam_moments(optimizer: Any) -> dict[str, torch.Tensor]:
    inner = optimizer.optimizer  # the torch optimizer inside the ZeRO optimizer
    return {
        f"{index}.{name}": value.clone()
        for index, state in enumerate(inner.state.values())
        for name, value in state.items()
        if torch.is_tensor(value) and value.ndim > 0
    }


def test_a_single_process_is_a_group_of_one() -> None:
    strategy = DeepSpeedStrategy(DeepSpeedStrategy.Config(zero_stage=1))
    strategy.setup_distributed()
    assert (strategy.rank, strategy.world_size, strategy.device.type) == (0, 1, "cpu")
    gathered = strategy.all_gather(torch.tensor([[1.0, 2.0]]))
    assert gathered.tolist() == [[1.0, 2.0]]
    assert float(strategy.all_reduce(3, op="mean")) == 3.0
    with pytest.raises(ValueError, match="unknown reduce op"):
        strategy.all_reduce(1.0, op="prod")  # type: ignore[arg-type]
