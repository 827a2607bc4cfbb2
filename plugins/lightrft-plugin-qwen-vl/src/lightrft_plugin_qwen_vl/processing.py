"""Loading a Qwen-VL processor where torchvision is missing.

transformers 5.x builds every Qwen-VL processor (``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor``,
``Qwen3VLProcessor``) with a video processor, and its video processors require torchvision:
without it ``AutoProcessor.from_pretrained`` raises even for image-only use. ``load_processor``
loads the folder with ``AutoProcessor`` when it can and otherwise builds the folder's
processor class without its video processor (tokenizer, image processor -- which falls back to
its PIL implementation -- and chat template); such a processor handles text and images, not
videos. Saved, it still names a video processor (the image sizes; the class comes from the
model type), so the folder loads with ``AutoProcessor`` where torchvision is installed.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightrft_core.models.processors import PROCESSOR_CONFIG, add_video_processor_config

if TYPE_CHECKING:
    from transformers import ProcessorMixin


@cache
def image_only_processor_class(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """``processor_class`` whose sub-processors are the image processor and the tokenizer
    only (same behaviour for text and images; its ``__name__`` stays the base's, so a saved
    folder names the standard class)."""

    class ImageOnly(processor_class):  # type: ignore[misc, valid-type]
        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            chat_template: Any = None,
            **kwargs: Any,
        ) -> None:
            # ProcessorMixin pairs positional sub-processors with this signature's names,
            # so the base's ``video_processor`` argument (None) is dropped.
            super().__init__(
                image_processor, tokenizer, None, chat_template=chat_template, **kwargs
            )

        def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
            saved = super().save_pretrained(save_directory, *args, **kwargs)
            add_video_processor_config(Path(save_directory))
            return saved

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_class.__name__
    ImageOnly.__doc__ = f"{processor_class.__name__} without a video processor."
    return ImageOnly


def load_processor(path: str | Path) -> Any:
    """``AutoProcessor.from_pretrained(path)``; without torchvision, the class named in the
    folder's ``processor_config.json`` built without its video processor."""
    import transformers
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    config_file = Path(path) / PROCESSOR_CONFIG
    if is_torchvision_available() or not config_file.is_file():
        return AutoProcessor.from_pretrained(path)
    base = getattr(transformers, json.loads(config_file.read_text())["processor_class"])
    if "video_processor" not in base.get_attributes():
        return AutoProcessor.from_pretrained(path)
    return image_only_processor_class(base).from_pretrained(path)
