"""The shards contract: `extra.encoder = "pipelines.visual_tokenizer.encoder:load_encoder"`.

`pipelines.data.featurize.load_visual_encoder(manifest)` imports this function and calls it with the
visual-tokenizer stage's manifest, once per shards worker process; the returned callable maps uint8 pixels
(B, 3, R, R) to int16 ids (B, grid * grid), one per patch, row-major.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

# Where the visual-tokenizer stage puts its files inside its output directory, and the function its
# manifest names (`extra.encoder`) for the shards stage to load it with.
WEIGHTS_REL = "tokenizer/visual_tokenizer.safetensors"
CONFIG_REL = "tokenizer/visual_tokenizer.json"
ENCODER_TARGET = "pipelines.visual_tokenizer.encoder:load_encoder"


class TokenEncoder:
    """A loaded tokenizer as a plain callable (what a shards worker process holds).

    Args:
        model: a `model.visual_tokenizer.VQKD` in eval mode.
        batch_size: images per forward; bounds memory for large batches, not the ids
            (every image is encoded independently).
        name: where the weights came from, for error messages.
    """

    def __init__(self, model, batch_size: int = 32, name: str = "visual tokenizer"):
        self.model, self.batch_size, self.name = model, max(1, batch_size), name
        cfg = model.config
        self.resolution, self.patch, self.grid = cfg.image_resolution, cfg.patch_size, cfg.grid

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        pixels = np.asarray(pixels)
        R = self.resolution
        if pixels.ndim != 4 or pixels.shape[1:] != (3, R, R):
            # the shards stage takes its resolution from the tokenizer when the pipeline loads, so only
            # a stage run on its own with another resolution gets here
            raise ValueError(f"{self.name} was trained at {R}x{R} px (patch {self.patch}, grid "
                             f"{self.grid}x{self.grid}) but got pixels {pixels.shape}; make the shards "
                             f"stage's image_resolution {R} or retrain the tokenizer at the new size")
        out = np.empty((pixels.shape[0], self.grid * self.grid), dtype=np.int16)  # (B, N)
        with torch.inference_mode():
            for i in range(0, len(pixels), self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(pixels[i:i + self.batch_size]))
                out[i:i + len(chunk)] = self.model.tokenize(chunk).numpy().astype(np.int16)
        return out


def load_local(directory: str, batch_size: int = 32) -> TokenEncoder:
    """A TokenEncoder from a local directory holding the saved tokenizer."""
    from model.visual_tokenizer import VQKD

    return TokenEncoder(VQKD.load(directory), batch_size, name=f"visual tokenizer at {directory}")


def load_encoder(manifest) -> TokenEncoder:
    """The contract function: a visual-tokenizer manifest -> TokenEncoder (weights read once)."""
    info = manifest.extra.get("visual_tokenizer", {})
    with tempfile.TemporaryDirectory(prefix="omniway-vqkd-") as tmp:
        # copy through the manifest so remote storage (s3://, gs://) works like a local path
        for rel in (info.get("weights", WEIGHTS_REL), info.get("config", CONFIG_REL)):
            with manifest.open(rel) as src, open(os.path.join(tmp, os.path.basename(rel)), "wb") as dst:
                dst.write(src.read())
        enc = load_local(tmp, int(info.get("encode_batch_size", 32)))
    enc.name = f"visual tokenizer {manifest.stage!r}"
    return enc


def code_usage(encoder: TokenEncoder, pixels: np.ndarray, codebook_size: int):
    """Usage figures of a tokenizer over ``pixels`` (n, 3, R, R) uint8.

    Returns:
        ({usage, perplexity, codes_used, images}, ids (n, N) int64, per-code counts (codebook_size,)).
    """
    import torch

    from model.vector_quantizer import NormEMAVectorQuantizer

    ids = encoder(pixels).astype(np.int64)  # (n, N)
    usage, perplexity = NormEMAVectorQuantizer.usage(torch.from_numpy(ids), codebook_size)
    counts = np.bincount(ids.reshape(-1), minlength=codebook_size)
    return ({"usage": usage, "perplexity": perplexity, "codes_used": float((counts > 0).sum()),
             "images": float(len(pixels))}, ids, counts)

