"""Audio of a data row: reading it from wherever the row keeps it, as a mono float32 waveform
at the rate the model's feature extractor reads.

An audio value is a local file path (wav, flac, ogg; a relative one is relative to the data
file's folder), the bytes of such a file, a ``datasets`` ``Audio`` value (``{"array": ...,
"sampling_rate": ...}`` or ``{"bytes": ..., "path": ...}``) or a numpy array, taken to be at
the feature extractor's rate (1-D, or ``[samples, channels]`` as ``soundfile`` reads).
Several channels are averaged; other rates are resampled with ``soxr``. Files are decoded
with ``soundfile``; both libraries are imported when the first audio is read
(``pip install 'lightrft-core[audio]'``).

A feature extractor that reads one fixed window (Whisper's: ``chunk_length`` seconds) would
cut a longer clip without a word; such a clip is refused instead (``AudioOptions.window``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import local_file

AUDIO_KINDS = (
    "a local file path (wav, flac, ogg), the bytes of such a file, a datasets Audio value "
    "or a numpy array"
)
INSTALL_HINT = "pip install 'lightrft-core[audio]'"


class AudioSupportMissing(ValueError):
    """``soundfile`` or ``soxr`` is not installed."""


@dataclass(frozen=True)
class AudioOptions:
    """How a run reads audio: ``sampling_rate`` of the model's feature extractor, the
    longest audio accepted, ``max_seconds`` (``None``: no limit), and the feature
    extractor's fixed window, ``window`` samples at ``sampling_rate`` (``None``: it reads
    any length)."""

    sampling_rate: int
    max_seconds: float | None = None
    window: int | None = None


def audio_feature_extractor(processor: Any) -> Any:
    """``processor``'s audio feature extractor (a transformers ``ProcessorMixin`` declaring
    one among its parts); ``None`` when it reads no audio."""
    from transformers import ProcessorMixin
    from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor

    if not isinstance(processor, ProcessorMixin):
        return None
    for name in processor.get_attributes():
        part = getattr(processor, name, None)  # a declared part may be left out
        if isinstance(part, SequenceFeatureExtractor):
            return part
    return None


def processor_sampling_rate(processor: Any) -> int | None:
    """The sampling rate of ``processor``'s audio feature extractor; ``None`` when it reads
    no audio."""
    extractor = audio_feature_extractor(processor)
    return None if extractor is None else int(extractor.sampling_rate)


def feature_window(extractor: Any) -> int | None:
    """The most samples ``extractor`` reads of a clip: a Whisper feature extractor pads and
    cuts every clip to ``chunk_length`` seconds (``n_samples``); ``None`` for extractors
    that read any length."""
    from transformers import WhisperFeatureExtractor

    return int(extractor.n_samples) if isinstance(extractor, WhisperFeatureExtractor) else None


def processor_audio_options(processor: Any, max_seconds: float | None) -> AudioOptions | None:
    """How to read audio for ``processor`` (its feature extractor's rate and window), at most
    ``max_seconds`` long; ``None`` when it reads no audio."""
    extractor = audio_feature_extractor(processor)
    if extractor is None:
        return None
    return AudioOptions(int(extractor.sampling_rate), max_seconds, feature_window(extractor))


def load_audio(value: Any, options: AudioOptions, *, base_dir: Path | None = None) -> np.ndarray:
    """``value`` (module docstring) as a 1-D float32 waveform at ``options.sampling_rate``;
    a ``ValueError`` saying why not (``AudioSupportMissing`` without the libraries)."""
    audio_libraries()  # whatever the value, a run that reads audio needs both
    samples, rate = _decoded(value, options.sampling_rate, base_dir)
    if samples.size == 0:
        raise ValueError("empty audio (0 samples)")
    if not np.isfinite(samples).all():
        raise ValueError("the audio holds NaN or infinite samples")
    seconds = samples.shape[0] / rate
    if options.max_seconds is not None and seconds > options.max_seconds:
        raise ValueError(
            f"the audio is {seconds:.1f} s long, over data.max_audio_seconds="
            f"{options.max_seconds:g}; cut it or raise the limit"
        )
    resampled = _resampled(samples, rate, options.sampling_rate)
    if options.window is not None and resampled.shape[0] > options.window:
        window = options.window / options.sampling_rate
        raise ValueError(
            f"the audio is {resampled.shape[0] / options.sampling_rate:.2f} s long, over the "
            f"{window:g} s window of the processor's feature extractor (its chunk_length), "
            "which would cut it; cut or split the clip"
        )
    return resampled


def _decoded(value: Any, rate: int, base_dir: Path | None) -> tuple[np.ndarray, float]:
    """The mono float32 samples of ``value`` and their sampling rate."""
    if isinstance(value, np.ndarray):
        return _mono(value), rate
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return _read(io.BytesIO(data), f"cannot decode {len(data)} bytes")
    if isinstance(value, Mapping):
        if value.get("array") is not None:
            if value.get("sampling_rate") is None:
                raise ValueError("the datasets Audio value has an array but no sampling_rate")
            return _mono(np.asarray(value["array"])), _rate(value["sampling_rate"])
        if value.get("bytes") is not None:
            return _decoded(value["bytes"], rate, base_dir)
        if value.get("path"):
            return _read_file(str(value["path"]), base_dir)
        raise ValueError("the datasets Audio value has no array, bytes or path")
    if isinstance(value, (str, Path)):
        return _read_file(str(value), base_dir)
    raise ValueError(f"expected {AUDIO_KINDS}, got {type(value).__name__}")


def _read_file(name: str, base_dir: Path | None) -> tuple[np.ndarray, float]:
    path, where = local_file(name, base_dir, "audio")
    return _read(path, f"cannot read {name!r}", where)


def _read(source: Any, what: str, where: str = "") -> tuple[np.ndarray, float]:
    """The samples ``soundfile`` decodes from ``source`` (a path or a file object)."""
    soundfile, _ = audio_libraries()
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # LibsndfileError: RuntimeError
        raise ValueError(f"{what}: not an audio file soundfile can decode ({exc}){where}") from None
    return _mono(samples), float(rate)


def _mono(samples: np.ndarray) -> np.ndarray:
    """1-D float32 samples: channels (``[samples, channels]``) averaged, integers scaled
    to [-1, 1]."""
    if samples.ndim not in (1, 2):
        raise ValueError(
            f"an audio array must be 1-D or [samples, channels], got shape {list(samples.shape)}"
        )
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples / float(np.iinfo(samples.dtype).max + 1)
    elif not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"an audio array must hold numbers, got dtype {samples.dtype}")
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    return np.ascontiguousarray(mono, dtype=np.float32)


def _rate(value: Any) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = 0.0
    if not rate > 0 or not np.isfinite(rate):
        raise ValueError(f"cannot convert the sampling rate {value!r}: not a positive number")
    return rate


def _resampled(samples: np.ndarray, rate: float, target: int) -> np.ndarray:
    if rate == target:
        return samples
    _, soxr = audio_libraries()
    try:
        converted = soxr.resample(samples, rate, target)
    except (RuntimeError, ValueError) as exc:
        message = f"cannot convert the sampling rate {rate:g} Hz to {target} Hz ({exc})"
        raise ValueError(message) from None
    if converted.size == 0:
        raise ValueError(f"the audio is too short to resample from {rate:g} Hz to {target} Hz")
    return np.ascontiguousarray(converted, dtype=np.float32)


def audio_libraries() -> tuple[Any, Any]:
    """``(soundfile, soxr)``; ``AudioSupportMissing`` naming the install when missing."""
    try:
        import soundfile
        import soxr
    except ImportError as exc:
        raise AudioSupportMissing(
            f"reading audio needs soundfile and soxr ({exc.name} is missing): {INSTALL_HINT}"
        ) from None
    return soundfile, soxr
