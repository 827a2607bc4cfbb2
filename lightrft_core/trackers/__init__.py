"""The built-in trackers (``console``, ``jsonl``, ``tensorboard``) and how a run builds the
trackers ``logging.trackers`` names. W&B and MLflow come as plugins."""

from __future__ import annotations

from .build import build_trackers, tracker_config
from .builtin import ConsoleTracker, JsonlTracker, TensorBoardTracker

__all__ = [
    "ConsoleTracker",
    "JsonlTracker",
    "TensorBoardTracker",
    "build_trackers",
    "tracker_config",
]
