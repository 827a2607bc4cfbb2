"""Saved processor folders: the ``processor_config.json`` of a processor built without the
video processor its class normally holds (where torchvision, which transformers' video
processors need, is missing)."""

from __future__ import annotations

import json
from pathlib import Path

PROCESSOR_CONFIG = "processor_config.json"


def add_video_processor_config(folder: Path) -> None:
    """Give the folder's ``processor_config.json`` a ``video_processor`` entry when it has
    none: the image processor's settings; ``AutoVideoProcessor`` takes the class from the
    model type (``config.json``). So the folder still loads with ``AutoProcessor`` where
    torchvision is installed."""
    config_file = folder / PROCESSOR_CONFIG
    config = json.loads(config_file.read_text())
    if "video_processor" in config or "image_processor" not in config:
        return
    image = config["image_processor"]
    config["video_processor"] = {k: v for k, v in image.items() if k != "image_processor_type"}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
