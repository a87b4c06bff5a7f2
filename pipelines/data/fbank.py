"""Log-mel filterbank features with torch.stft (torchaudio is not available beside the CPU wheel).

Conventions (what `fbank` in the shards holds):
- input: mono float32 waveform in [-1, 1] at 16 kHz; shorter than one window -> zero-padded
  to one window (1 frame);
- frames: 25 ms periodic Hann window (400 samples), 10 ms hop (160), n_fft = 400, no centre
  padding, so frames = 1 + (T - 400) // 160;
- power spectrum |STFT|^2 (201 bins, 0..8 kHz);
- 128 triangular mel filters, HTK mel scale (mel = 2595 log10(1 + f / 700)), edges evenly
  spaced on the mel scale from 0 Hz to 8 kHz, peak 1, no area normalisation;
- natural log of max(mel energy, 1e-10);
- stored float16, (frames, mels) row-major; `fbank_frames` = frames.
No per-utterance mean/variance normalisation: the model's input layer owns that.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipelines.data.schema import FBANK_HOP, FBANK_MELS, FBANK_SAMPLE_RATE, FBANK_WIN

N_FFT = FBANK_WIN
LOG_FLOOR = 1e-10


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = FBANK_MELS, n_fft: int = N_FFT,
                   sample_rate: int = FBANK_SAMPLE_RATE):
    """(n_mels, n_fft // 2 + 1) float32 torch tensor of triangular filters (see module doc)."""
    import torch

    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)                    # (F,) Hz per bin
    edges = mel_to_hz(np.linspace(0, hz_to_mel(sample_rate / 2), n_mels + 2))  # (M + 2,) Hz
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]        # (M, 1) each
    up = (bins[None, :] - lo) / (mid - lo)
    down = (hi - bins[None, :]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(up, down))                                # (M, F)
    return torch.from_numpy(fb.astype(np.float32))


def log_mel(wave: np.ndarray) -> np.ndarray:
    """(T,) float32 16 kHz mono -> (frames, 128) float32 log-mel energies."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if x.numel() < FBANK_WIN:
        x = torch.nn.functional.pad(x, (0, FBANK_WIN - x.numel()))
    spec = torch.stft(x, n_fft=N_FFT, hop_length=FBANK_HOP, win_length=FBANK_WIN,
                      window=torch.hann_window(FBANK_WIN, periodic=True), center=False,
                      return_complex=True)                                    # (F, frames)
    power = spec.real ** 2 + spec.imag ** 2                                   # (F, frames)
    mel = mel_filterbank() @ power                                            # (M, frames)
    return torch.log(mel.clamp_min(LOG_FLOOR)).T.contiguous().numpy()         # (frames, M)


def fbank_bytes(wave: np.ndarray) -> tuple[bytes, int]:
    """(T,) -> (float16 little-endian bytes of (frames, 128), frames)."""
    feats = log_mel(wave).astype("<f2")
    return feats.tobytes(), feats.shape[0]


def decode_fbank(data: bytes, frames: int) -> np.ndarray:
    """Inverse of fbank_bytes: -> (frames, 128) float16."""
    return np.frombuffer(data, dtype="<f2").reshape(frames, FBANK_MELS)
