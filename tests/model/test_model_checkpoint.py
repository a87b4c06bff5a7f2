"""omniway safetensors checkpoints: config embedded, strict key checks that list every difference."""

import pytest
import torch
from safetensors.torch import save_file

from model import CheckpointKeyError, ModelConfig, load_checkpoint, load_state_dict_strict, read_checkpoint, save_checkpoint


def test_model_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig.from_size("debug", expert_policy="kv", fusion_layers=1)
    model = config.build().eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    loaded_config, tensors = read_checkpoint(path)
    assert loaded_config == config
    loaded = load_checkpoint(path).eval()
    inputs = {"pixels": torch.randn(1, 3, 32, 32), "text_ids": torch.randint(0, 512, (1, 5))}
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs).hidden, model(inputs).hidden, rtol=0, atol=0)


def test_model_checkpoint_mismatch_lists_keys(tmp_path):
    model = ModelConfig.from_size("debug").build()
    sd = model.state_dict()
    sd.pop("encoder.blocks.1.ffn.audio.fc1.weight")
    sd["encoder.blocks.0.ffn.B.fc1.weight"] = torch.zeros(1)
    sd["adapters.text.embed.weight"] = torch.zeros(3, 64)
    before = model.adapters["vision"].cls_token.clone()
    sd["adapters.vision.cls_token"] = torch.ones_like(before)
    with pytest.raises(CheckpointKeyError) as err:
        load_state_dict_strict(model, sd)
    msg = str(err.value)
    assert "missing (1): encoder.blocks.1.ffn.audio.fc1.weight" in msg
    assert "unexpected (1): encoder.blocks.0.ffn.B.fc1.weight" in msg
    assert "adapters.text.embed.weight: checkpoint (3, 64) vs model (512, 64)" in msg
    assert torch.equal(model.adapters["vision"].cls_token, before)  # nothing was half-loaded

    other = ModelConfig.from_size("debug", expert_policy="ffn").build()
    path = tmp_path / "ffn.safetensors"
    save_checkpoint(path, other)
    with pytest.raises(CheckpointKeyError, match="missing"):
        load_checkpoint(path, model)

    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(ValueError, match="not an omniway checkpoint"):
        read_checkpoint(bare)
