"""Loading a Qwen2.5-Omni processor where torchvision is missing.

transformers' ``Qwen2_5OmniProcessor`` holds an image processor, a video processor, a
Whisper feature extractor and a tokenizer; its video processor requires torchvision, so
without it ``AutoProcessor.from_pretrained`` raises even for prompts without videos.
``load_omni_processor`` then builds ``WithoutVideo`` -- the same processor for text, images
and audio, without the video processor -- from the folder. Its placeholder expansion reads
the video processor's merge size for every prompt; the image processor's stands in (videos
themselves are refused). Saved, the folder gets a ``video_processor`` entry (the image
processor's settings), so it still loads with ``AutoProcessor`` where torchvision is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Qwen2_5OmniProcessor

from lightrft_core.models.processors import add_video_processor_config


class WithoutVideo(Qwen2_5OmniProcessor):
    """``Qwen2_5OmniProcessor`` for text, images and audio, without a video processor."""

    def __init__(
        self,
        image_processor: Any = None,
        feature_extractor: Any = None,
        tokenizer: Any = None,
        chat_template: Any = None,
        **kwargs: Any,
    ) -> None:
        # ProcessorMixin pairs the positional sub-processors it gets with this signature's
        # names, so the base's fourth argument (None) is dropped
        super().__init__(
            image_processor, feature_extractor, tokenizer, None, chat_template=chat_template
        )

    @property
    def video_processor(self) -> Any:
        """The image processor: the base reads ``video_processor.merge_size`` (and its input
        names) for every prompt; no video is ever processed (``__call__``)."""
        return self.image_processor

    def __call__(self, *args: Any, videos: Any = None, **kwargs: Any) -> Any:
        if videos is not None:
            raise ValueError(
                "this Qwen2.5-Omni processor has no video processor (torchvision is not "
                "installed): prompts may hold text, images and audio"
            )
        return super().__call__(*args, **kwargs)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        add_video_processor_config(Path(save_directory))
        return saved


WithoutVideo.__name__ = WithoutVideo.__qualname__ = Qwen2_5OmniProcessor.__name__


def load_omni_processor(path: str | Path) -> Any:
    """``AutoProcessor.from_pretrained(path)`` where torchvision is installed, else
    ``WithoutVideo.from_pretrained(path)``."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return AutoProcessor.from_pretrained(path)
    return WithoutVideo.from_pretrained(path)
