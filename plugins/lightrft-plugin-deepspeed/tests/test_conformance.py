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


def _linear_on(strategy: DeepSpeedStrategy, width: int = 3) -> tuple[Any, Any]:
    model = torch.nn.Sequential(torch.nn.Linear(4, width))
    model, optimizer, _ = strategy.prepare(model, torch.optim.Adam(model.parameters()))
    return model, optimizer


@pytest.mark.parametrize(
    ("part", "cut", "shown"),
    [
        ("deepspeed/mp_rank_00_model_states.pt", True, "deepspeed is damaged (PytorchStream"),
        ("deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt", False, "deepspeed is damaged ("),
        ("lightrft_deepspeed.json", False, "lightrft_deepspeed.json is damaged (Expecting value"),
        ("rng_rank0.pt", True, "rng_rank0.pt is damaged ("),
    ],
)
def test_a_damaged_checkpoint_is_one_clear_error(
    tmp_path: Path, part: str, cut: bool, shown: str
) -> None:
    from lightrft_core.checkpoint import CheckpointError

    strategy = DeepSpeedStrategy(DeepSpeedStrategy.Config(zero_stage=2))
    strategy.setup_distributed()
    model, optimizer = _linear_on(strategy)
    strategy.save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer)
    damaged_file = tmp_path / "ckpt" / part
    data = damaged_file.read_bytes()
    damaged_file.write_bytes(data[: len(data) // 2] if cut else b"not a checkpoint" * 4)
    model, optimizer = _linear_on(strategy)
    with pytest.raises(CheckpointError) as caught:
        strategy.load_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {tmp_path / 'ckpt'}: {shown}")
    assert message.endswith("; resume from an earlier checkpoint") and "\n" not in message


def test_a_checkpoint_of_another_model_size_is_one_clear_error(tmp_path: Path) -> None:
    from lightrft_core.checkpoint import CheckpointError

    strategy = DeepSpeedStrategy(DeepSpeedStrategy.Config(zero_stage=2))
    strategy.setup_distributed()
    model, optimizer = _linear_on(strategy)
    strategy.save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer)
    model, optimizer = _linear_on(strategy, width=5)
    with pytest.raises(CheckpointError, match=r"does not fit the model \(another model size") as c:
        strategy.load_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer)
    assert "size mismatch for 0.weight" in str(c.value) and "\n" not in str(c.value)
