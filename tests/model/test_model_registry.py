"""A new modality is an adapter plus its name in the config: no edit to the encoder."""

import pytest
import torch
from torch import nn

from model import AdapterOutput, ModalityAdapter, ModelConfig, register_modality
from model.modalities import unregister_modality


class DepthAdapter(ModalityAdapter):
    """Toy modality: a (B, K, 5) point list, linearly embedded, with a learned CLS."""

    input_keys = ("points",)

    def __init__(self, config):
        super().__init__()
        self.proj = nn.Linear(5, config.dim)
        self.cls = nn.Parameter(torch.randn(1, 1, config.dim))

    def forward(self, inputs):
        x = self.proj(inputs["points"])  # (B, K, C)
        return AdapterOutput(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1))


@pytest.fixture
def depth_modality():
    register_modality("points", DepthAdapter)
    yield "points"
    unregister_modality("points")


def test_model_toy_fourth_modality(depth_modality):
    config = ModelConfig.from_size("debug", modalities=("vision", "text", "audio", "points"), fusion_layers=1)
    model = config.build()
    block = model.encoder.blocks[0]
    assert "points" in block.ffn and "points" in block.attn.qkv and "points" in model.encoder.final_norm
    inputs = {"points": torch.randn(2, 6, 5), "text_ids": torch.randint(0, 512, (2, 4))}
    out = model(inputs)
    assert out.tokens["points"].shape == (2, 7, 64) and out.pooled["points"].shape == (2, 64)
    assert [s.modality for s in out.layout] == ["text", "points"]  # config order
    out.tokens["points"].sum().backward()
    assert block.ffn["points"].fc1.weight.grad is not None
    assert block.ffn["vision"].fc1.weight.grad is None
    assert model.adapters["points"].proj.weight.grad is not None


def test_model_registry_errors(depth_modality):
    with pytest.raises(KeyError, match="already registered"):
        register_modality("points", DepthAdapter)
    with pytest.raises(KeyError, match="reserved"):
        register_modality("fusion", DepthAdapter)
    with pytest.raises(KeyError, match="not registered"):
        ModelConfig.from_size("debug", modalities=("smell",)).build()
    model = ModelConfig.from_size("debug", modalities=("text",)).build()
    with pytest.raises(ValueError, match="no modality input"):
        model({"pixels": torch.randn(1, 3, 32, 32)})
