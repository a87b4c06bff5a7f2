"""Batch collation for pretraining: shard rows (numpy columns) -> model-ready tensors, and masks.

Rows arrive as Ray Data numpy batches of one sample group (see ``recipes.GROUPS``): list columns are
object arrays of arrays, binary columns object arrays of bytes, nulls ``None``. ``Collator.collate``
decodes and pads; ``Collator.add_masks`` draws the masks of a step from an explicit generator, so a
resumed run draws the same masks for the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.pixels import normalize_pixels_, to_unit_pixels

from .augment import augment_images
from .masking import block_mask, random_token_mask, span_mask
from .matching import draw_matching
from .recipes import GROUPS, Recipe

# modality-level task on triplets: the modalities kept beside the fully masked text, one variant per step
TRIPLET_KEEP = (("image", "audio"), ("image",), ("audio",))


@dataclass
class BatchSpec:
    """How shard rows become tensors.

    Args:
        image_size: model input resolution; shard pixels of another resolution are resized.
        shard_resolution: R of the shards' 3×R×R pixels.
        patch_size: model patch side (grid of the image mask).
        max_text_tokens: longest text kept (the model's position table bounds it).
        max_audio_frames: longest fbank kept, in frames (cropped from the start).
        patch_frames: frames per audio token (grid of the audio mask).
        n_mels: mel bins of the shards' fbank.
        pad_id, bos_id, eos_id, mask_id: text special ids (pad/bos/eos are never masked).
    """

    image_size: int
    shard_resolution: int
    patch_size: int
    max_text_tokens: int
    max_audio_frames: int
    patch_frames: int = 4
    n_mels: int = 128
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    mask_id: int = 4

    @classmethod
    def for_model(cls, config, shard_resolution: int, ids: dict | None = None,
                  max_audio_frames: int | None = None) -> "BatchSpec":
        """The spec of a model over stored rows.

        Args:
            config: the ``model.ModelConfig`` the batches feed.
            shard_resolution: R of the rows' 3×R×R pixels.
            ids: the text tokenizer's special ids as the shards manifest records them (``pad``, ``bos``,
                ``eos``, ``<mask>``); missing ones keep the defaults.
            max_audio_frames: fbank frames kept; default: what the audio position table covers.
        """
        ids = ids or {}
        return cls(image_size=config.vision.img_size, shard_resolution=int(shard_resolution),
                   patch_size=config.vision.patch_size,
                   max_text_tokens=config.text.max_positions - config.position_offset,
                   max_audio_frames=max_audio_frames or (config.audio.max_tokens - 1) * config.audio.patch_frames,
                   patch_frames=config.audio.patch_frames, n_mels=config.audio.n_mels,
                   pad_id=ids.get("pad", cls.pad_id), bos_id=ids.get("bos", cls.bos_id),
                   eos_id=ids.get("eos", cls.eos_id), mask_id=ids.get("<mask>", cls.mask_id))


class Collator:
    """Turns one group's numpy batch into tensors and draws its masks.

    Args:
        spec: the ``BatchSpec``.
        recipe: mask ratios come from it.
    """

    def __init__(self, spec: BatchSpec, recipe: Recipe):
        self.spec, self.recipe = spec, recipe

    # -- decoding --------------------------------------------------------------------------------------
    def collate(self, group: str, batch: dict[str, np.ndarray],
                augment_seeds: list[int] | None = None) -> dict[str, torch.Tensor]:
        """numpy columns of B rows of ``group`` -> tensors (see the module docstring).

        ``augment_seeds``: one seed per row (``tasks.augment.sample_seeds``) to augment the images with the
        recipe's ``augment`` settings (training only). The shards' visual tokens describe the stored image,
        not the augmented view, so they are left out then: the caller tokenizes the view."""
        mods = GROUPS[group]
        out: dict[str, torch.Tensor] = {}
        if "text" in mods:
            out.update(self._text(batch["text_ids"]))
        if "image" in mods:
            out["pixels"] = self._pixels(batch["pixels"], augment_seeds)
            codes = batch.get("image_tokens")
            if augment_seeds is None and codes is not None and all(c is not None for c in codes):
                out["image_tokens"] = torch.from_numpy(np.stack([np.asarray(c, np.int64) for c in codes]))
        if "audio" in mods:
            out.update(self._audio(batch["fbank"], batch["fbank_frames"]))
        return out

    def _text(self, column) -> dict[str, torch.Tensor]:
        s = self.spec
        seqs = [np.asarray(ids, dtype=np.int64)[: s.max_text_tokens] for ids in column]
        L = max(len(x) for x in seqs)
        ids = np.full((len(seqs), L), s.pad_id, dtype=np.int64)
        for i, x in enumerate(seqs):
            ids[i, : len(x)] = x
        ids_t = torch.from_numpy(ids)  # (B, L)
        pad = torch.arange(L)[None, :] >= torch.tensor([len(x) for x in seqs])[:, None]  # (B, L)
        return {"text_ids": ids_t, "text_padding_mask": pad}

    def _pixels(self, column, augment_seeds: list[int] | None = None) -> torch.Tensor:
        s = self.spec
        R = s.shard_resolution
        arr = np.stack([np.frombuffer(b, dtype=np.uint8).reshape(3, R, R) for b in column])  # (B, 3, R, R)
        x = to_unit_pixels(torch.from_numpy(arr))  # (B, 3, R, R) in [0, 1]
        if augment_seeds is not None:  # crop, flip, jitter; the crop is resized to the model's size
            return normalize_pixels_(augment_images(x, augment_seeds, self.recipe.augment, s.image_size))
        if R != s.image_size:
            x = F.interpolate(x, size=(s.image_size, s.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return normalize_pixels_(x)  # (B, 3, S, S) in [-1, 1]

    def _audio(self, column, frames_column) -> dict[str, torch.Tensor]:
        s = self.spec
        feats = []
        for data, frames in zip(column, frames_column):
            f = np.frombuffer(data, dtype="<f2").reshape(int(frames), s.n_mels)[: s.max_audio_frames]
            f = f.astype(np.float32)
            # per-utterance normalisation: log-mel levels differ by recording; targets become comparable
            f = (f - f.mean()) / (f.std() + 1e-5)
            feats.append(f)
        T = max(len(f) for f in feats)
        T = -(-T // s.patch_frames) * s.patch_frames  # whole patches
        out = np.zeros((len(feats), T, s.n_mels), dtype=np.float32)
        for i, f in enumerate(feats):
            out[i, : len(f)] = f
        return {"fbank": torch.from_numpy(out),  # (B, T, M)
                "fbank_frames": torch.tensor([len(f) for f in feats], dtype=torch.long)}  # (B,)

    # -- masks -----------------------------------------------------------------------------------------
    def add_masks(self, group: str, t: dict[str, torch.Tensor], generator: torch.Generator,
                  shared: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Add ``text_mask`` (B, L), ``pixel_mask`` (B, N) and ``fbank_mask`` (B, N_audio) for the group's
        modalities; joint ratios apply when the sample has more than one modality. For the recipe's
        modality-level task (groups with text and more): ``modality_rows`` (k,) the rows whose text is
        reconstructed, ``modality_mask`` (k, L) its tokens predicted and ``modality_keep`` (1,) the index of
        the modalities kept (``TRIPLET_KEEP`` for triplets); for matching, ``tasks.matching.draw_matching``'s
        draws.

        ``shared``: a generator drawing the same on every rank (defaults to ``generator``): what decides
        which passes run (the kept modalities) must not differ between ranks, which run one code path."""
        s, r = self.spec, self.recipe
        mods = GROUPS[group]
        joint = len(mods) > 1
        t = dict(t)
        B = next(iter(t.values())).shape[0]
        if r.uses("modality") and "text" in mods and joint and r.modality_prob > 0:
            k = min(B, max(1, round(r.modality_prob * B)))  # the same k on every rank: same B everywhere
            rows = torch.randperm(B, generator=generator)[:k].sort().values
            ids = t["text_ids"][rows]
            t["modality_rows"] = rows  # (k,)
            # the text tokens reconstructed, (k, L): under the MLM decoder the whole text of those rows is
            # masked, every token but padding, bos and eos; the causal decoder predicts every token after
            # bos, eos included (the caption's end is generated too)
            predicted = ~t["text_padding_mask"][rows] & (ids != s.bos_id)
            t["modality_mask"] = predicted & (ids != s.eos_id) if r.modality_decoder == "mlm" else predicted
            variants = len(TRIPLET_KEEP) if len(mods) == 3 else 1
            t["modality_keep"] = torch.randint(0, variants, (1,), generator=shared or generator)
        if r.uses("match") and joint:
            t.update(draw_matching(B, len(mods) == 3, generator))
        if "text" in mods:
            ids = t["text_ids"]
            valid = ~t["text_padding_mask"] & (ids != s.bos_id) & (ids != s.eos_id)
            t["text_mask"] = random_token_mask(valid, r.text_mask_joint if joint else r.text_mask, generator)
        if "image" in mods:
            grid = s.image_size // s.patch_size
            t["pixel_mask"] = block_mask(t["pixels"].shape[0], grid,
                                         r.image_mask_joint if joint else r.image_mask, generator)
        if "audio" in mods:
            n = t["fbank"].shape[1] // s.patch_frames
            valid = torch.arange(n)[None, :] < (-(-t["fbank_frames"] // s.patch_frames))[:, None]  # (B, N)
            t["fbank_mask"] = span_mask(valid, r.audio_mask, r.audio_span, generator)
        return t
