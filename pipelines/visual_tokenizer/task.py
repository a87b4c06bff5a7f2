"""`VQKDTask`: the visual tokenizer as a `TrainTask` of the project's one training loop.

One training stream, `images` (uint8 pixels at the tokenizer's resolution), one validation stream.
The module DeepSpeed wraps is `model.visual_tokenizer.VQKD` itself: its forward returns the loss and
scalar diagnostics; its codebook is a buffer updated by EMA inside forward (all-reduced across ranks
by the quantizer), so the optimizer only sees encoder and decoder weights.
"""

from __future__ import annotations

from typing import Any, Iterable

from pipelines.train.task import TrainTask


def build_teacher(target: str | None):
    """"module:function" -> the frozen teacher module it returns (None: pixel target)."""
    if not target:
        return None
    import importlib

    module, fn = target.split(":", 1)
    return getattr(importlib.import_module(module), fn)()


class VQKDTask(TrainTask):
    """Args:
        cfg: the stage's `VisualTokenizerConfig`.
        train_ds: Ray dataset of train pixels; val_ds: of val pixels (or None).
    """

    def __init__(self, cfg, train_ds, val_ds=None):
        self.cfg, self.train_ds, self.val_ds = cfg, train_ds, val_ds

    # -- driver side -----------------------------------------------------------------------------
    def check(self) -> None:
        need = self.cfg.train.micro_batch_size * self.cfg.train.num_workers
        if self.train_ds is None or self.train_ds.count() < need:
            raise ValueError(f"visual-tokenizer: the corpus has fewer train images than "
                             f"train.micro_batch_size x train.num_workers = {need}; lower them or add images")

    def datasets(self) -> dict[str, Any]:
        out = {"train-images": self.train_ds}
        if self.val_ds is not None:
            out["val-images"] = self.val_ds
        return out

    # -- worker side -----------------------------------------------------------------------------
    def stream_batch_sizes(self) -> dict[str, int]:
        return {"images": self.cfg.train.micro_batch_size}

    def build_model(self, train):
        from model.visual_tokenizer import VQKD

        # cfg.tokenizer is a model.vqkd_config.VQKDConfig (the stage's config uses the model's class)
        return VQKD(self.cfg.tokenizer, target=build_teacher(self.cfg.teacher),
                    checkpoint_activations=train.activation_checkpointing)

    def collate(self, stream: str, batch: dict):
        import torch

        # a copy: Ray Data's batch is a read-only view of Arrow memory, which torch.from_numpy would share
        return torch.tensor(batch["pixels"])  # (B, 3, R, R) uint8

    def prepare(self, batch: dict[str, Any], *, step: int, rank: int, device, dtype):
        from model.pixels import to_float_pixels

        return to_float_pixels(batch["images"].to(device)).to(dtype)  # (B, 3, R, R) in [-1, 1]

    def batch_stats(self, batch, num_params: int) -> dict[str, float]:
        B = batch["images"].shape[0]
        tokens = B * self.cfg.tokenizer.image_resolution ** 2 // self.cfg.tokenizer.patch_size ** 2
        # every parameter sees every patch token once (encoder and decoder both run on N tokens)
        return {"samples": float(B), "tokens": float(tokens), "flops": 6.0 * num_params * tokens}

    def validate(self, module, streams: dict[str, Iterable], *, step: int, device, dtype) -> dict[str, float]:
        import torch

        from model.vector_quantizer import NormEMAVectorQuantizer
        from model.pixels import to_float_pixels

        ids, rec, n = [], 0.0, 0
        with torch.inference_mode():
            for pixels in streams.get("images", []):
                x = to_float_pixels(pixels.to(device)).to(dtype)
                codes = module.tokenize(x)  # (B, N)
                out = module.decode(module.quantizer.embed(codes))
                with torch.no_grad():
                    target = module.target(x).to(out.dtype)
                rec += float(module.reconstruction_loss(out, target)) * len(x)
                n += len(x)
                ids.append(codes.flatten().cpu())
        if not ids:
            return {}
        usage, perplexity = NormEMAVectorQuantizer.usage(torch.cat(ids), module.config.codebook_size)
        return {"rec_loss": rec / n, "usage": usage, "perplexity": perplexity, "images": float(n)}

    def export(self, module, out_dir: str) -> list[str]:
        module.save(out_dir)
        from model.visual_tokenizer import CONFIG_FILE, WEIGHTS_FILE

        return [WEIGHTS_FILE, CONFIG_FILE]
