"""The public interfaces every LightRFT component implements."""

from .actor import MODALITY_PARAMETERS, Actor, ActorModality, ActorOutput
from .algorithm import (
    AdvantageInput,
    AdvantageOutput,
    Algorithm,
    AlgorithmContext,
    CriticLayout,
    CriticSpec,
    LossScale,
    PolicyLossInput,
    PolicyLossOutput,
    ValueLossInput,
    ValueLossOutput,
)
from .component import Component, EmptyConfig, component_class_problems
from .engine import GenerationOutput, InferenceEngine, SamplingParams
from .multimodal import MultiModalInputs, collate_modal_inputs
from .parts import AdvantageEstimator, AlgorithmPart, PolicyLoss
from .patch import ModelPatch
from .reward import RewardInput, RewardModel, RewardOutput
from .strategy import StrategyBase
from .tracker import SamplesTable, TrackedRun, Tracker

#: Component kinds, in the order they are documented, and their interface.
COMPONENT_KINDS: dict[str, type[Component]] = {
    "strategy": StrategyBase,
    "actor": Actor,
    "reward": RewardModel,
    "engine": InferenceEngine,
    "algorithm": Algorithm,
    "advantage": AdvantageEstimator,
    "loss": PolicyLoss,
    "patch": ModelPatch,
    "tracker": Tracker,
}

__all__ = [
    "COMPONENT_KINDS",
    "MODALITY_PARAMETERS",
    "Actor",
    "ActorModality",
    "ActorOutput",
    "AdvantageEstimator",
    "AdvantageInput",
    "AdvantageOutput",
    "Algorithm",
    "AlgorithmContext",
    "AlgorithmPart",
    "Component",
    "CriticLayout",
    "CriticSpec",
    "EmptyConfig",
    "GenerationOutput",
    "InferenceEngine",
    "LossScale",
    "ModelPatch",
    "MultiModalInputs",
    "PolicyLoss",
    "PolicyLossInput",
    "PolicyLossOutput",
    "RewardInput",
    "RewardModel",
    "RewardOutput",
    "SamplesTable",
    "SamplingParams",
    "StrategyBase",
    "TrackedRun",
    "Tracker",
    "ValueLossInput",
    "ValueLossOutput",
    "collate_modal_inputs",
    "component_class_problems",
]
