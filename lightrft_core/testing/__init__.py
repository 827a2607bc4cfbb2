"""Test kit for plugin authors: fakes that are real components, and conformance tests.

Fakes (``lightrft_core.testing.fakes``): ``FakeStrategy`` (every strategy method, one
process, no process group), ``FakeEngine`` (fixed token ids), ``ConstantReward``,
``FakeActor`` (a tiny torch language model).

Conformance (``lightrft_core.testing.conformance``): ``AlgorithmConformance``,
``StrategyConformance``, ``EngineConformance``, ``RewardConformance``, ``ActorConformance``,
``PatchConformance``, ``TrackerConformance`` -- subclass one in your plugin's tests as
``TestMyThing`` and set the class attribute (e.g. ``algorithm_cls = MyAlgorithm``).

Training helpers (``lightrft_core.testing.training``): ``ThreadGroup`` (ranks as threads with
a real all-reduce), ``LetterReward`` and ``LetterPlugin`` (an easy graded task),
``write_letter_prompts``, ``build_fast_tiny_model`` and ``short_rl_rewards`` (a short seeded
run of the core loop with a plugin's algorithm).

Packing (``lightrft_core.testing.packing``): ``assert_packed_equals_padded`` (an actor's
log-probs, entropies and gradients on packed rows against its padded run).

Fixtures (``lightrft_core.testing.fixtures``, loaded by pytest wherever lightrft-core is
installed): ``tiny_model_dir``, ``fast_tiny_model_dir``, ``letter_prompts``.
"""

from .conformance import (
    ActorConformance,
    AlgorithmConformance,
    EngineConformance,
    PatchConformance,
    RewardConformance,
    StrategyConformance,
    TrackerConformance,
)
from .fakes import ConstantReward, FakeActor, FakeEngine, FakeStrategy

__all__ = [
    "ActorConformance",
    "AlgorithmConformance",
    "ConstantReward",
    "EngineConformance",
    "FakeActor",
    "FakeEngine",
    "FakeStrategy",
    "PatchConformance",
    "RewardConformance",
    "StrategyConformance",
    "TrackerConformance",
]
