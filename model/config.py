"""Model configuration: typed, nested dataclasses and the registry of named sizes.

A config is plain data. It round-trips through JSON (``to_dict`` / ``from_dict``) so it can be embedded in
checkpoints and saved with a run; ``from_dict`` is strict (``model.typed_config``, the project's one
loader): an unknown key or a wrong type is a ``ConfigError`` that names the key, never silently dropped.
Standard library only, so the pipeline planner checks model settings without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .typed_config import ConfigError, from_dict, merge

# Which sub-modules of a block are duplicated per modality, by policy name.
#   all: released BEiT-3 code (torchscale): every projection and norm has one copy per modality.
#   ffn: BEiT-3 paper / ONE-PEACE: shared self-attention, per-modality FFN and norms.
#   kv:  mPLUG-Owl2 modality-adaptive module: per-modality k/v projections and norms, shared q/out/FFN.
BLOCK_PARTS = ("attn_norm", "q", "k", "v", "attn_sub_norm", "out", "ffn_norm", "ffn", "final_norm")
EXPERT_POLICIES: dict[str, frozenset[str]] = {
    "all": frozenset(BLOCK_PARTS),
    "ffn": frozenset({"attn_norm", "ffn_norm", "ffn", "final_norm"}),
    "kv": frozenset({"attn_norm", "k", "v", "ffn_norm", "final_norm"}),
}


@dataclass
class VisionConfig:
    """Vision adapter settings.

    Args:
        img_size: square input resolution in pixels.
        patch_size: patch side in pixels (16 for BEiT-3 base/large, 14 for giant).
        in_chans: input channels.
        stem: ``"conv"`` (one strided conv, BEiT-3) or ``"hmlp"`` (ONE-PEACE hierarchical MLP stem,
            patch/4 -> 2 -> 2; needs ``patch_size`` divisible by 4).
        abstractor_queries: K > 0 puts mPLUG-Owl2's visual abstractor after the patch embedding: K learned
            queries cross-attend to the N patch tokens, and the sequence holds CLS + K image tokens instead
            of CLS + N (no per-patch outputs then: masked image modeling is off). 0: no abstractor.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    stem: str = "conv"
    abstractor_queries: int = 0

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


@dataclass
class TextConfig:
    """Text adapter settings.

    Args:
        vocab_size: token vocabulary (BEiT-3's sentencepiece model has 64,010).
        max_positions: rows of the learned position table, including ``ModelConfig.position_offset``
            unused leading rows (torchscale's ``max_source_positions``).
        pad_id: padding token id (only used by helpers; the padding mask is always explicit).
    """

    vocab_size: int = 64010
    max_positions: int = 1024
    pad_id: int = 1


@dataclass
class AudioConfig:
    """Audio adapter settings: patches of consecutive log-mel frames.

    Args:
        n_mels: mel bins per frame (the shards store 128).
        patch_frames: frames folded into one token (4 frames of 10 ms = 40 ms per token).
        max_tokens: longest audio token sequence (CLS included) the position table covers.
    """

    n_mels: int = 128
    patch_frames: int = 4
    max_tokens: int = 1026


@dataclass
class ModelConfig:
    """The whole multiway transformer.

    Args:
        dim: hidden width.
        layers: number of multiway blocks.
        heads: attention heads.
        ffn_dim: FFN inner width.
        modalities: registered modality names, in the order their segments appear in the sequence
            (BEiT-3 puts the image before the text).
        expert_policy: which block parts are per modality: ``all`` | ``ffn`` | ``kv`` (see EXPERT_POLICIES).
        fusion_layers: the top F blocks get a fusion FFN expert used by every token of a multimodal
            sequence (BEiT-3 paper's VL-FFN); 0 turns it off.
        subln: Magneto sub-LN (extra LN before the attention output projection and inside the FFN, and
            init of fc1/fc2/out/v scaled by sqrt(log 2N)).
        layer_scale: init value of per-channel residual scales (ONE-PEACE uses 1e-6); 0 turns them off.
        drop_path: stochastic depth rate of the last block (linear from 0).
        rel_pos_buckets: T5-style relative position bias buckets shared by all blocks; 0 turns it off.
        max_rel_pos: largest distance the buckets resolve.
        norm_eps: LayerNorm epsilon.
        position_offset: leading unused rows of every learned position table (fairseq starts at 2;
            kept so torchscale checkpoints load unchanged).
        fused_qkv: compute q/k/v projections that share routing in one matmul (a speed choice; the
            checkpoint interop splits/merges the weights).
        checkpoint_activations: recompute each block in backward to save memory.
        vision, text, audio: per-modality adapter settings.
    """

    dim: int = 768
    layers: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    modalities: tuple[str, ...] = ("vision", "text", "audio")
    expert_policy: str = "all"
    fusion_layers: int = 0
    subln: bool = True
    layer_scale: float = 0.0
    drop_path: float = 0.0
    rel_pos_buckets: int = 0
    max_rel_pos: int = 0
    norm_eps: float = 1e-5
    position_offset: int = 2
    fused_qkv: bool = True
    checkpoint_activations: bool = False
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.expert_policy not in EXPERT_POLICIES:
            raise ValueError(f"expert_policy {self.expert_policy!r} not in {sorted(EXPERT_POLICIES)}")
        if not 0 <= self.fusion_layers <= self.layers:
            raise ValueError(f"fusion_layers {self.fusion_layers} must lie in [0, layers={self.layers}]")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be non-empty and unique, got {self.modalities}")
        if "fusion" in self.modalities:
            raise ValueError("'fusion' is reserved for the fusion expert")
        if (self.rel_pos_buckets > 0) != (self.max_rel_pos > 0):
            raise ValueError("rel_pos_buckets and max_rel_pos must be both set or both 0")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def per_modality(self) -> frozenset[str]:
        """Block parts that have one copy per modality under this config's policy."""
        return EXPERT_POLICIES[self.expert_policy]

    @property
    def subln_init_scale(self) -> float:
        # Magneto (torchscale Encoder with subln): weights of fc1/fc2/out_proj/v_proj times sqrt(log 2N).
        return math.sqrt(math.log(2 * self.layers)) if self.subln else 1.0

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_size(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A registered size with overrides; nested settings take a dict or a dataclass
        (``vision={"img_size": 384}``) and merge into the size's values."""
        return cls.from_overrides(name, overrides)

    @classmethod
    def from_overrides(cls, size: str, overrides: dict[str, Any], path: str = "ModelConfig") -> "ModelConfig":
        """``from_size`` with the overrides as a mapping; errors name keys under ``path`` (a stage's
        ``with.model``), e.g. ``with.model.vision.patch_sise: unknown key``.

        Raises:
            ConfigError: an unknown size, an unknown or mistyped key, or an inconsistent config.
        """
        if size not in SIZES:
            raise ConfigError(f"{path}: unknown model size {size!r} (registered: {', '.join(sorted(SIZES))})")
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(overrides).__name__} {overrides!r}")
        return from_dict(cls, merge(SIZES[size].to_dict(), overrides), path)

    def build(self):
        """Build the ``MultiwayModel`` this config describes (on the current default device)."""
        from .network import MultiwayModel

        return MultiwayModel(self)

    # --- serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "ModelConfig") -> "ModelConfig":
        """Strict: an unknown or mistyped key is a ``ConfigError`` naming it."""
        return from_dict(cls, data, path)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


# --- named sizes ------------------------------------------------------------------------------------

SIZES: dict[str, ModelConfig] = {}


def register_size(name: str, config: ModelConfig) -> ModelConfig:
    """Register a named size (a full ``ModelConfig``); names are unique."""
    if name in SIZES:
        raise ConfigError(f"model size {name!r} is already registered")
    SIZES[name] = config
    return config


register_size(
    "debug",
    ModelConfig(
        dim=64, layers=2, heads=2, ffn_dim=128,
        vision=VisionConfig(img_size=32, patch_size=8),
        text=TextConfig(vocab_size=512, max_positions=66),
        audio=AudioConfig(n_mels=128, patch_frames=4, max_tokens=66),
    ),
)
register_size("base", ModelConfig(dim=768, layers=12, heads=12, ffn_dim=3072))
register_size("large", ModelConfig(dim=1024, layers=24, heads=16, ffn_dim=4096))
register_size(
    "giant",
    ModelConfig(dim=1408, layers=40, heads=16, ffn_dim=6144, vision=VisionConfig(img_size=224, patch_size=14)),
)
