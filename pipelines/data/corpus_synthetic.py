"""A generated webdataset corpus with planted exact duplicates, for scale checks and tests.

    write_webdataset_corpus(root, samples=50_000)  ->  root/00000.tar, root/00001.tar, ...

Each sample is `<key>.png` (64 x 64 RGB noise, unique per sample) and `<key>.txt` (a caption). A
`dup_fraction` share of the samples copy the image and caption of an earlier sample (in an earlier
tar as often as not), so exactly those are the corpus stage's duplicates (within one corpus: see
`seed`); the returned dict says which.
Deterministic for a seed.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG", compress_level=1)  # noise does not compress anyway
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset_corpus(root: str, samples: int, *, first: int = 0, per_tar: int = 1000,
                            dup_fraction: float = 0.05, side: int = 64, seed: int = 0) -> dict[str, str]:
    """Write the tars under `root` (created); returns {duplicate key: key of the copy it repeats},
    keys as `<tar name>/<sample key>` (the corpus stage's sample id without the source name).

    Args:
        root: output directory.
        samples: samples in all.
        per_tar: samples per tar shard.
        dup_fraction: share of samples that repeat an earlier one (image and caption).
        side: image side in pixels.
        seed: everything random follows from it; sample i's content is a function of (seed, i) alone,
            so two corpora of one seed whose index ranges overlap (see `first`) share those contents.
        first: index of the first sample (its key is `f"{first:08d}"`).
    """
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    end = first + samples
    is_dup = rng.random(end) < dup_fraction
    is_dup[0] = False
    tar_of = {i: f"{(i - first) // per_tar:05d}.tar" for i in range(first, end)}

    def sample(i: int) -> tuple[bytes, bytes]:  # an original's content, from its index alone
        pixels = np.random.default_rng([seed, i]).integers(0, 256, (side, side, 3), dtype=np.uint8)
        return _png(pixels), f"synthetic picture {i}".encode()

    planted: dict[str, str] = {}
    for t in range(-(-samples // per_tar)):
        with tarfile.open(os.path.join(root, f"{t:05d}.tar"), "w") as tar:
            for i in range(first + t * per_tar, min(end, first + (t + 1) * per_tar)):
                key = f"{i:08d}"
                j = i
                if is_dup[i] and i > first:
                    j = int(rng.integers(first, i))
                    while is_dup[j] and j > first:  # repeat an original: the first copy is unambiguous
                        j = int(rng.integers(first, i))
                    planted[f"{tar_of[i]}/{key}"] = f"{tar_of[j]}/{j:08d}"
                png, caption = sample(j)
                _add(tar, f"{key}.png", png)
                _add(tar, f"{key}.txt", caption)
    return planted
