"""The models an evaluation scores, loaded where they run (once per Ray Data actor).

A model source is a small picklable dict, so actors on any node can load it themselves:

    {"kind": "pretrain", "manifest": Manifest}   # backbone + the contrast projection of its heads
    {"kind": "instruct", "manifest": Manifest}   # embedding suites: its backbone; generation: the LM head too
    {"kind": "checkpoint", "path": "beit3_base.pth", "heads": 12}   # torchscale / unilm BEiT-3 weights

Embeddings come from ``tasks.pretrain.unit_embedding`` (the contrast projection when the source has
one, else the normalised CLS feature), exactly as pretraining's validation computes them.
"""

from __future__ import annotations

import os
import tempfile

MODEL_FILE, HEADS_FILE = "model.safetensors", "heads.safetensors"
INSTRUCT_FILES = ("model.safetensors", "lm_head.safetensors", "instruct.json", "text.model")


class EvaluationModelError(ValueError):
    """A model source cannot be loaded for what a suite asks; the message says what to do."""


def describe(source: dict) -> dict:
    """What the metrics and the report say about the model: stage, kind and key (or the file)."""
    if source["kind"] == "checkpoint":
        return {"kind": "checkpoint", "path": source["path"]}
    m = source["manifest"]
    return {"stage": m.stage, "kind": m.kind, "key": m.key}


def _local_copy(manifest, names, directory: str) -> str:
    """Copy ``names`` of a stage output (local or on URI storage) into ``directory``."""
    for name in names:
        with manifest.open(name) as src, open(os.path.join(directory, name), "wb") as dst:
            dst.write(src.read())
    return directory


def model_config(source: dict):
    """The source's backbone ``ModelConfig``, without loading its weights."""
    from model import ModelConfig

    if source["kind"] == "checkpoint":
        from model.checkpoint import load_torch_weights
        from model.interop.beit3 import beit3_config

        return beit3_config(load_torch_weights(source["path"]), heads=source.get("heads") or None)
    return ModelConfig.from_dict(source["manifest"].extra["model_config"])


class EmbeddingModel:
    """A backbone and, when the source has one, its contrastive projection; ``embed`` gives unit vectors.

    Args:
        source: a model source (see the module docs).
    """

    def __init__(self, source: dict):
        from safetensors.torch import load_file

        from model import load_checkpoint, load_state_dict_strict
        from model.checkpoint import load_torch_weights
        from tasks.objectives import CrossModalContrast

        self.contrast = None
        if source["kind"] == "checkpoint":
            from model.interop.beit3 import beit3_config, load_beit3, unwrap

            checkpoint = load_torch_weights(source["path"])
            self.backbone = beit3_config(checkpoint, heads=source.get("heads") or None).build()
            load_beit3(self.backbone, checkpoint, ignore_extra=True, keep_other_modalities=True)
            # unilm's retrieval checkpoints (BEiT3ForRetrieval) hold the projections their scores use
            _, others = unwrap(checkpoint)
            if "vision_head.weight" in others and "language_head.weight" in others:
                E = others["vision_head.weight"].shape[0]
                self.contrast = CrossModalContrast(self.backbone.config.dim, E, ("vision", "text"))
                self.contrast.head.proj["vision"].weight.data.copy_(others["vision_head.weight"])
                self.contrast.head.proj["text"].weight.data.copy_(others["language_head.weight"])
                self.contrast.eval()
        else:
            m = source["manifest"]
            names = [MODEL_FILE] + ([HEADS_FILE] if m.kind == "pretrain" else [])
            with tempfile.TemporaryDirectory(prefix="omniway-eval-") as tmp:
                _local_copy(m, names, tmp)
                self.backbone = load_checkpoint(os.path.join(tmp, MODEL_FILE))
                heads = load_file(os.path.join(tmp, HEADS_FILE)) if m.kind == "pretrain" else {}
            contrast = {k[len("contrast."):]: v for k, v in heads.items() if k.startswith("contrast.")}
            if contrast:
                mods = tuple(k.split(".")[2] for k in contrast if k.startswith("head.proj."))
                embed_dim = contrast[f"head.proj.{mods[0]}.weight"].shape[0]  # weight: (E, C)
                self.contrast = CrossModalContrast(self.backbone.config.dim, embed_dim, mods)
                load_state_dict_strict(self.contrast, contrast, where=f"{m.stage}: {HEADS_FILE} contrast.*")
                self.contrast.eval()
        self.backbone.eval()
        self.config = self.backbone.config

    @property
    def embed_dim(self) -> int:
        """E of ``embed``'s vectors: the contrast projection's width, else the model width."""
        if self.contrast is not None:
            return next(iter(self.contrast.head.proj.values())).out_features
        return self.config.dim

    def embed(self, tensors: dict, modality: str):
        """Collated tensors of one batch (``tasks.Collator``) -> (B, E) float32 unit vectors of ``modality``."""
        import torch

        from tasks.pretrain import unit_embedding

        with torch.inference_mode():
            return unit_embedding(self.backbone, self.contrast, tensors, modality).float()


def load_assistant(source: dict, directory: str):
    """The ``pipelines.generate.Assistant`` of an instruct output, its files copied into ``directory``."""
    from pipelines.generate import Assistant

    if source["kind"] != "instruct":
        raise EvaluationModelError(f"generation suites need an `instruct` stage; the model is {describe(source)}")
    return Assistant.load(_local_copy(source["manifest"], INSTRUCT_FILES, directory))
