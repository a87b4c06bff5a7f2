"""Heads: shapes, the MLM tie to the text embedding, the clamped contrastive temperature."""

import math

import torch

from model import AudioRegressionHead, ContrastiveHead, ITMHead, LMHead, MIMHead, MLMHead, ModelConfig


def test_model_heads_on_backbone_features():
    torch.manual_seed(0)
    config = ModelConfig.from_size("debug")
    model = config.build()
    out = model({
        "pixels": torch.randn(2, 3, 32, 32),
        "text_ids": torch.randint(0, 512, (2, 5)),
        "fbank": torch.randn(2, 8, 128),
    })
    mlm = MLMHead(config.dim, config.text.vocab_size)
    logits = mlm(out.tokens["text"], model.text_embedding.weight)
    assert logits.shape == (2, 5, config.text.vocab_size)
    assert MIMHead(config.dim, 1024)(out.tokens["vision"][:, 1:]).shape == (2, 16, 1024)
    audio = AudioRegressionHead(config.dim, config.audio.n_mels, config.audio.patch_frames)
    assert audio(out.tokens["audio"][:, 1:]).shape == (2, 2, 4 * 128)
    assert ITMHead(config.dim)(out.pooled["vision"]).shape == (2, 2)
    assert LMHead(config.dim, config.text.vocab_size)(out.tokens["text"]).shape == (2, 5, 512)

    # the MLM output matrix is the embedding: its gradient reaches the embedding, and the head owns no copy
    model.zero_grad()
    logits.logsumexp(-1).sum().backward()
    assert model.text_embedding.weight.grad is not None
    assert all(p.shape != model.text_embedding.weight.shape for p in mlm.parameters())


def test_model_contrastive_head():
    torch.manual_seed(0)
    head = ContrastiveHead(16, 8, ("vision", "text", "audio"))
    assert math.isclose(head.logit_scale().item(), 1 / 0.07, rel_tol=1e-5)
    emb = head({"vision": torch.randn(3, 16), "text": torch.randn(3, 16)})
    assert set(emb) == {"vision", "text"}
    for e in emb.values():
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        head.log_scale.fill_(10.0)
    scale = head.logit_scale()
    assert math.isclose(scale.item(), 100.0, rel_tol=1e-5)
    scale.backward()
    assert head.log_scale.grad.item() == 0.0  # clamped: no push further up
