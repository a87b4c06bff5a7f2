"""A tiny saved VQ-KD visual tokenizer and a committed-looking visual-tokenizer manifest for it, matching
the synthetic shards of `omniway_shard_fixtures` (32 px, patch 8, 64 codes), randomly initialised: what it
computes is a fixed function of the pixels, which is all the augmentation tests need."""

from __future__ import annotations

import os

from omniway_shard_fixtures import RESOLUTION


def write_visual_tokenizer(root: str, *, codebook_size: int = 64, seed: int = 0, stage: str = "visual-tokenizer"):
    """Save the tokenizer under `<root>/tokenizer/` and return its `Manifest` (kind `visual-tokenizer`)."""
    import torch

    from model.visual_tokenizer import VQKD, VQKDConfig
    from pipelines.manifest import Manifest, describe_files, fingerprint_of
    from pipelines.visual_tokenizer.encoder import CONFIG_REL, ENCODER_TARGET, WEIGHTS_REL

    torch.manual_seed(seed)
    config = VQKDConfig(image_resolution=RESOLUTION, patch_size=8, dim=32, depth=1, heads=2, ffn_dim=64,
                        decoder_depth=1, codebook_size=codebook_size, code_dim=16)
    VQKD(config).save(os.path.join(root, os.path.dirname(WEIGHTS_REL)))
    files = describe_files(root, {})
    extra = {"encoder": ENCODER_TARGET,
             "visual_tokenizer": {"weights": WEIGHTS_REL, "config": CONFIG_REL, "format": "omniway.vqkd/1",
                                  "image_resolution": RESOLUTION, "patch_size": 8, "grid": RESOLUTION // 8,
                                  "num_patches": (RESOLUTION // 8) ** 2, "codebook_size": codebook_size,
                                  "code_dim": 16, "ids_dtype": "int16", "encode_batch_size": 32}}
    data = {"stage": stage, "kind": "visual-tokenizer", "key": "fixture", "files": files, "schema_version": None,
            "extra": extra, "metrics": {}, "fingerprint": fingerprint_of("fixture-vqkd", files)}
    return Manifest(dir=root, data=data, storage_uri=os.path.dirname(root))
