"""Config dataclasses, strict (de)serialisation, the size registry and parameter counts."""

import pytest
import torch

from model import EXPERT_POLICIES, SIZES, ConfigError, ModelConfig, register_size


def test_model_sizes_registered():
    assert {"debug", "base", "large", "giant"} <= set(SIZES)
    expected = {"base": (768, 12, 12, 3072, 16), "large": (1024, 24, 16, 4096, 16), "giant": (1408, 40, 16, 6144, 14)}
    for name, (dim, layers, heads, ffn, patch) in expected.items():
        c = ModelConfig.from_size(name)
        assert (c.dim, c.layers, c.heads, c.ffn_dim, c.vision.patch_size) == (dim, layers, heads, ffn, patch)
    with pytest.raises(ConfigError, match="already registered"):
        register_size("debug", ModelConfig())
    with pytest.raises(ConfigError, match="unknown model size 'huge'"):
        ModelConfig.from_size("huge")


def test_model_from_size_overrides_merge_nested():
    c = ModelConfig.from_size("debug", expert_policy="kv", vision={"img_size": 48}, layers=3)
    assert c.expert_policy == "kv" and c.layers == 3
    assert c.vision.img_size == 48 and c.vision.patch_size == SIZES["debug"].vision.patch_size
    assert SIZES["debug"].layers == 2  # the registry entry is untouched


def test_model_config_json_round_trip_and_strictness():
    c = ModelConfig.from_size("debug", fusion_layers=1, modalities=("text", "vision"))
    assert ModelConfig.from_json(c.to_json()) == c
    # one loader, one error type (model.typed_config): the message names the key path
    with pytest.raises(ConfigError, match=r"^widht: unknown key \(known keys: dim, layers"):
        ModelConfig.from_dict({**c.to_dict(), "widht": 3}, path="")
    with pytest.raises(ConfigError, match=r"^ModelConfig\.vision\.size: unknown key \(known keys: img_size"):
        ModelConfig.from_dict({**c.to_dict(), "vision": {"size": 3}})
    with pytest.raises(ConfigError, match=r"^ModelConfig\.layers: expected an integer, got '2'"):
        ModelConfig.from_dict({**c.to_dict(), "layers": "2"})
    with pytest.raises(ConfigError, match=r"^with\.model\.vision\.patch_sise: unknown key"):
        ModelConfig.from_overrides("debug", {"vision": {"patch_sise": 8}}, "with.model")
    with pytest.raises(ValueError, match="expert_policy"):
        ModelConfig.from_size("debug", expert_policy="A")
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig.from_size("debug", heads=3)
    with pytest.raises(ValueError, match="fusion_layers"):
        ModelConfig.from_size("debug", fusion_layers=5)


def _count(name, **kw):
    with torch.device("meta"):
        model = ModelConfig.from_size(name, **kw).build()
    assert all(p.is_meta for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


def test_model_parameter_counts_match_published():
    # Released BEiT-3 = policy "all", vision + text. The published 276M / 746M count the pretraining
    # checkpoint: backbone + an untied text output layer (vocab x dim) + the MIM head (dim x 8192 + bias).
    published = {"base": 276e6, "large": 746e6}
    for name, target in published.items():
        c = ModelConfig.from_size(name)
        backbone = _count(name, modalities=("vision", "text"), expert_policy="all")
        total = backbone + c.text.vocab_size * c.dim + c.dim * 8192 + 8192
        assert abs(total - target) / target < 0.005, (name, backbone, total)
    # Paper giant (1.9B): shared attention, V and L experts in all 40 layers, VL experts in the top 3.
    giant = _count("giant", modalities=("vision", "text"), expert_policy="ffn", fusion_layers=3)
    assert 1.80e9 < giant < 1.90e9
    # each added modality adds one expert set under "all": more parameters, monotonically
    assert _count("debug") > _count("debug", modalities=("vision", "text")) > _count("debug", modalities=("text",))


def test_model_policies_decide_which_parts_are_per_modality():
    from model.routing import Experts

    def kinds(policy):
        block = ModelConfig.from_size("debug", expert_policy=policy).build().encoder.blocks[0]
        return {
            name: isinstance(getattr(block.attn if name in ("q", "kv", "qkv", "out", "sub_norm") else block, name), Experts)
            for name in ("attn_norm", "ffn_norm", "ffn", "out", "sub_norm") + block.attn.proj_names
        }

    assert kinds("all") == dict(attn_norm=True, ffn_norm=True, ffn=True, out=True, sub_norm=True, qkv=True)
    assert kinds("ffn") == dict(attn_norm=True, ffn_norm=True, ffn=True, out=False, sub_norm=False, qkv=False)
    assert kinds("kv") == dict(attn_norm=True, ffn_norm=True, ffn=False, out=False, sub_norm=False, q=False, kv=True)
    assert set(EXPERT_POLICIES) == {"all", "ffn", "kv"}
    # experts are named by modality
    block = ModelConfig.from_size("debug").build().encoder.blocks[0]
    assert set(block.ffn.keys()) == {"vision", "text", "audio"}
