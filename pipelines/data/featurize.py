"""Corpus row -> shards row: the per-sample function of the shards stage.

`Featurizer.rows` is plain Python over a list of corpus rows, so the benchmark's
single-process loop and the Ray tasks run exactly the same code. The sentencepiece
model (and a visual tokenizer, when one is an input) is loaded once per instance,
i.e. once per Ray worker process (see `shards_task.worker_state`). Nothing here imports
torch (the log-mel is numpy): only a visual tokenizer does, when one is an input -- torch
costs seconds of start-up per process.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.shards import ShardsConfig


# A visual tokenizer maps uint8 pixels (B, 3, R, R) to token ids (B, patches).
VisualEncoder = Callable[[np.ndarray], np.ndarray]


class Featurizer:
    """Loads the tokenizers once; turns corpus rows into model-ready rows.

    Args:
        spm_model: bytes of the sentencepiece `.model`.
        cfg: the shards config (resolution, token bound).
        visual: optional visual tokenizer (see VisualEncoder), or None.
    """

    def __init__(self, spm_model: bytes, cfg: ShardsConfig, visual: Optional[VisualEncoder] = None):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=spm_model)
        self.bos, self.eos = self.sp.bos_id(), self.sp.eos_id()
        self.cfg = cfg
        self.visual = visual
        if visual is not None:
            import torch

            torch.set_num_threads(1)  # one worker per core; torch threads would oversubscribe

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        """Batch-encode; each row is bos + ids + eos, cut to max_text_tokens (eos kept)."""
        body = self.cfg.max_text_tokens - 2
        return [[self.bos, *ids[:body], self.eos] for ids in self.sp.encode(texts, num_threads=1)]

    def rows(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from pipelines.data.audio import load_audio_16k
        from pipelines.data.fbank import fbank_bytes
        from pipelines.data.image import image_pixels

        R = self.cfg.image_resolution
        texts = [r["text"] for r in batch if r["text"] is not None]
        ids = iter(self.text_ids(texts)) if texts else iter(())
        out, pixel_rows = [], []
        for r in batch:
            row = {"sample_id": r["sample_id"], "split": r["split"], "modalities": r["modalities"],
                   "text_ids": next(ids) if r["text"] is not None else None, "pixels": None,
                   "image_tokens": None, "fbank": None, "fbank_frames": None, "label": r["label"]}
            if r["image"] is not None:
                pix = image_pixels(r["image"], R)  # (3, R, R) uint8
                row["pixels"] = pix.tobytes()
                pixel_rows.append((row, pix))
            if r["audio"] is not None:
                row["fbank"], row["fbank_frames"] = fbank_bytes(load_audio_16k(r["audio"]))
            out.append(row)
        if self.visual is not None and pixel_rows:
            tokens = self.visual(np.stack([p for _, p in pixel_rows]))  # (B, patches)
            for (row, _), tok in zip(pixel_rows, tokens):
                row["image_tokens"] = np.asarray(tok, dtype=np.int16).tolist()
        return out


def load_visual_encoder(manifest) -> VisualEncoder:
    """The visual tokenizer contract: its manifest's `extra.encoder` names "module:function"
    taking (manifest) and returning a VisualEncoder: the visual-tokenizer stage names
    `pipelines.visual_tokenizer.encoder:load_encoder`."""
    import importlib

    target = manifest.extra.get("encoder")
    if not target or ":" not in target:
        raise ValueError(f"visual tokenizer {manifest.stage!r}: its manifest has no "
                         "extra.encoder = 'module:function'; cannot compute image_tokens")
    module, fn = target.split(":", 1)
    return getattr(importlib.import_module(module), fn)(manifest)
