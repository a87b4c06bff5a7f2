"""Log-mel filterbank features in numpy alone (no torch: a shards worker that never sees a
visual tokenizer starts without paying seconds of `import torch`).

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

The FFT runs in float64 (numpy's float64 FFT is several times faster than its float32 one),
the rest in float32. The mel projection sums each filter's few non-zero bins (a contiguous
run of at most ~10 of the 201) instead of a dense matrix product: no BLAS call per clip, so
the cost does not depend on BLAS threads or on how busy the machine's cores are.
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
                   sample_rate: int = FBANK_SAMPLE_RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float64 array of triangular filters (see module doc)."""
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)                    # (F,) Hz per bin
    edges = mel_to_hz(np.linspace(0, hz_to_mel(sample_rate / 2), n_mels + 2))  # (M + 2,) Hz
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]        # (M, 1) each
    up = (bins[None, :] - lo) / (mid - lo)
    down = (hi - bins[None, :]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(up, down))                                # (M, F)
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=4)
def _sparse_filterbank(n_mels: int = FBANK_MELS, n_fft: int = N_FFT,
                       sample_rate: int = FBANK_SAMPLE_RATE):
    """The filterbank as (cols, weights, starts, filled): the non-zero bins of every non-empty
    filter, concatenated filter after filter; `starts` where each filter's run begins; `filled`
    the indices of those filters (a few narrow low filters hold no bin at all: energy 0)."""
    fb = mel_filterbank(n_mels, n_fft, sample_rate)
    cols, weights, starts, filled = [], [], [], []
    for m, row in enumerate(fb):
        nz = np.flatnonzero(row)
        if nz.size:
            starts.append(len(cols))
            filled.append(m)
            cols += nz.tolist()
            weights += row[nz].tolist()
    return (np.asarray(cols), np.asarray(weights, dtype=np.float32)[:, None], np.asarray(starts),
            np.asarray(filled))


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    n = np.arange(FBANK_WIN, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / FBANK_WIN)  # periodic Hann (= torch.hann_window)


def log_mel(wave: np.ndarray) -> np.ndarray:
    """(T,) float32 16 kHz mono -> (frames, 128) float32 log-mel energies."""
    x = np.ascontiguousarray(wave, dtype=np.float64).reshape(-1)
    if x.size < FBANK_WIN:
        x = np.pad(x, (0, FBANK_WIN - x.size))
    n = 1 + (x.size - FBANK_WIN) // FBANK_HOP
    frames = np.lib.stride_tricks.as_strided(                                   # (N, 400) view
        x, (n, FBANK_WIN), (FBANK_HOP * x.itemsize, x.itemsize), writeable=False)
    spec = np.fft.rfft(frames * _window(), n=N_FFT, axis=-1)                    # (N, F) complex128
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32).T              # (F, N)
    cols, weights, starts, filled = _sparse_filterbank()
    mel = np.zeros((FBANK_MELS, n), dtype=np.float32)                           # (M, N)
    mel[filled] = np.add.reduceat(power[cols] * weights, starts, axis=0)
    np.maximum(mel, LOG_FLOOR, out=mel)
    return np.log(mel, out=mel).T.copy()                                        # (N, M)


def fbank_bytes(wave: np.ndarray) -> tuple[bytes, int]:
    """(T,) -> (float16 little-endian bytes of (frames, 128), frames)."""
    feats = log_mel(wave).astype("<f2")
    return feats.tobytes(), feats.shape[0]


def decode_fbank(data: bytes, frames: int) -> np.ndarray:
    """Inverse of fbank_bytes: -> (frames, 128) float16."""
    return np.frombuffer(data, dtype="<f2").reshape(frames, FBANK_MELS)
