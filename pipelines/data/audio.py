"""Audio decode + validate: soundfile decode, mono, soxr resample, duration bounds."""

from __future__ import annotations

import io
from typing import Optional, TYPE_CHECKING

import numpy as np
import soundfile as sf

from pipelines.data.text import Rejected, error_detail

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import AudioLimits

SUPPORTED_EXTS = {"", "wav", "flac", "ogg"}


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded bytes -> (float32 (T, C), sample rate). Raises Rejected."""
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile errors have several types
        raise Rejected("undecodable_audio", error_detail(e)) from None
    return wave, rate


def to_mono_16k(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(T, C) float32 at `rate` -> (T',) float32 mono at `target` (soxr, high quality)."""
    import soxr

    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if rate != target:
        mono = soxr.resample(mono, rate, target, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def normalize_audio(data: Optional[bytes], limits: AudioLimits, ext: str = "") -> Optional[bytes]:
    """Encoded bytes -> 16 kHz mono PCM16 FLAC/WAV bytes (None when absent). Raises Rejected."""
    if data is None:
        return None
    if ext.lower() not in SUPPORTED_EXTS:
        raise Rejected("unsupported_format", f"audio extension .{ext}")
    if len(data) > limits.max_bytes:
        raise Rejected("too_large", f"{len(data)} bytes > max_bytes {limits.max_bytes}")
    if not data:
        raise Rejected("empty_audio", "0 bytes")
    wave, rate = decode_audio(data)
    if wave.shape[0] == 0:
        raise Rejected("empty_audio", "0 samples")
    seconds = wave.shape[0] / rate
    if seconds < limits.min_seconds:
        raise Rejected("too_short", f"{seconds:.3f}s < min_seconds {limits.min_seconds}")
    if seconds > limits.max_seconds:
        raise Rejected("too_long", f"{seconds:.1f}s > max_seconds {limits.max_seconds}")
    mono = to_mono_16k(wave, rate, limits.sample_rate)
    if not np.any(mono):
        raise Rejected("empty_audio", "all samples are zero")
    out = io.BytesIO()
    # PCM16 keeps files small and exact; clip because resampling can overshoot ±1.
    sf.write(out, np.clip(mono, -1.0, 1.0), limits.sample_rate, format=limits.format.upper(),
             subtype="PCM_16")
    return out.getvalue()


def load_audio_16k(data: bytes) -> np.ndarray:
    """Corpus audio bytes (already 16 kHz mono) -> float32 (T,)."""
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return to_mono_16k(wave, rate, 16_000)
