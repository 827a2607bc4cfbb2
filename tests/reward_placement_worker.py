"""The torchrun worker of ``test_reward_heads.py``: a two-head reward model placed by the
fsdp strategy on 2 ranks (sharded as an inference model).

``torchrun tests/reward_placement_worker.py MODEL OUT``: each rank scores the same texts
with the unsharded model, then ``place``s it with the fsdp strategy and scores them again;
rank 0 writes ``OUT/result.json``: every rank's parameter bytes before and after placement,
and the largest score difference (reward and every head) between the two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(model_dir: str, out: str) -> None:
    import lightrft_plugin_fsdp.plugin
    from lightrft_core.interfaces import RewardInput
    from lightrft_core.plugins import PluginManager
    from lightrft_core.rewards.model import ScalarRewardModel

    pm = PluginManager(autoload=False)
    pm.register(lightrft_plugin_fsdp.plugin, name="fsdp")
    strategy_cls = pm.get_strategy("fsdp")
    strategy = strategy_cls(strategy_cls.Config())
    strategy.setup_distributed()
    reward = ScalarRewardModel(
        ScalarRewardModel.Config(path=model_dir, head="helpful", batch_size=3)
    )
    batch = RewardInput(
        prompts=["say a:", "Q: 1+1=", "hello", "x", "say b:"],
        responses=["aaaa", "2", " world, how are you", "y" * 30, "b"],
    )
    unsharded = reward.score(batch)
    reward.place(strategy)
    sharded = reward.score(batch)
    diffs = {
        name: float((sharded.sub_scores[name] - unsharded.sub_scores[name]).abs().max())
        for name in unsharded.sub_scores
    }
    diffs["reward"] = float((sharded.rewards - unsharded.rewards).abs().max())
    memory = torch.tensor(
        [reward.memory["before"]["parameter_bytes"], reward.memory["after"]["parameter_bytes"]],
        dtype=torch.float64,
    )
    every_rank = strategy.all_gather(memory[None])  # [ranks, 2]
    if strategy.is_rank_0:
        Path(out).mkdir(parents=True, exist_ok=True)
        result = {"bytes": every_rank.tolist(), "diffs": diffs, "heads": reward.heads}
        (Path(out) / "result.json").write_text(json.dumps(result))
    strategy.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
