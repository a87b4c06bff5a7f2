"""Generation with a KV cache: each decode step's logits equal a full prefix-LM forward's (fp32, 1e-5) for
image+text, audio+text and text-only prompts under every expert policy and with fusion experts; beam
search with one beam is greedy; a batch of prompts of different lengths gives each row what it gives alone."""

from __future__ import annotations

import pytest
import torch

from model import LMHead, ModelConfig
from model.generation import beam_search, decode_step, generate, prefill

VOCAB, EOS = 512, 3


def build(policy: str, fusion: int = 0, rel_pos: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    extra = {"rel_pos_buckets": 16, "max_rel_pos": 64} if rel_pos else {}
    config = ModelConfig.from_size("debug", expert_policy=policy, fusion_layers=fusion, **extra)
    model = config.build().eval()
    head = LMHead(config.dim, VOCAB).eval()
    return model, head


def media(kind: str, B: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    if kind == "image":
        return {"pixels": torch.randn(B, 3, 32, 32, generator=g)}
    if kind == "audio":
        frames = torch.tensor([24 - 7 * (i % 2) for i in range(B)])  # (B,): some rows padded
        return {"fbank": torch.randn(B, 24, 128, generator=g), "fbank_frames": frames}
    return {}


def prompt(B: int, L: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, VOCAB, (B, L), generator=g)


@pytest.mark.parametrize("policy", ["all", "ffn", "kv"])
@pytest.mark.parametrize("kind", ["image", "audio", "text"])
@pytest.mark.parametrize("fusion", [0, 1])
def test_cached_decode_equals_full_forward_at_every_step(policy, kind, fusion):
    model, head = build(policy, fusion)
    B, L, steps = 2, 5, 6
    ids = prompt(B, L)
    inputs = {**media(kind, B), "text_ids": ids}
    hidden, state = prefill(model, inputs)
    assert_decode_equals_full_forward(model, head, inputs, hidden, state, torch.full((B,), L), steps)


def assert_decode_equals_full_forward(model, head, inputs: dict, hidden, state, start: torch.Tensor,
                                      steps: int) -> None:
    """Greedy decode from a prefill (``hidden``, ``state``) predicts, at every step, what a full forward of
    prompt + generated tokens with ``text_causal_start`` = ``start`` (B,) predicts (fp32, 1e-5)."""
    seq, L = inputs["text_ids"], inputs["text_ids"].shape[1]
    with torch.no_grad():
        for t in range(steps):
            cached = head(hidden)  # (B, V): predicts token L + t
            full = model({**inputs, "text_ids": seq, "text_causal_start": start})
            text = full.layout.segment("text")
            reference = head(full.hidden[:, text.start + L + t - 1])
            torch.testing.assert_close(cached, reference, rtol=0, atol=1e-5)
            nxt = cached.argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            hidden = decode_step(model, nxt, state)


def test_relative_position_bias_decodes_exactly_with_text_last():
    model, head = build("ffn", fusion=1, rel_pos=True)
    B, L = 2, 4
    ids = prompt(B, L)
    inputs = {**media("image", B), "text_ids": ids}
    hidden, state = prefill(model, inputs)
    seq = ids
    with torch.no_grad():
        for t in range(4):
            full = model({**inputs, "text_ids": seq, "text_causal_start": torch.full((B,), L)})
            reference = head(full.hidden[:, full.layout.segment("text").start + L + t - 1])
            torch.testing.assert_close(head(hidden), reference, rtol=0, atol=1e-5)
            nxt = reference.argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            hidden = decode_step(model, nxt, state)
    with pytest.raises(NotImplementedError, match="text as the last segment"):
        prefill(model, {**media("audio", B), "text_ids": ids})


def test_prefix_never_sees_the_response_even_after_the_text():
    # audio follows text in the sequence: its tokens must not depend on the response, or the cache lies
    model, _ = build("all")
    ids = prompt(1, 6)
    audio = media("audio", 1)
    with torch.no_grad():
        a = model({**audio, "text_ids": ids, "text_causal_start": torch.tensor([3])})
        b = model({**audio, "text_ids": torch.cat([ids[:, :3], ids[:, 3:].flip(1)], 1),
                   "text_causal_start": torch.tensor([3])})
    torch.testing.assert_close(a.tokens["audio"], b.tokens["audio"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a.tokens["text"][:, :3], b.tokens["text"][:, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(a.tokens["text"][:, 3:], b.tokens["text"][:, 3:])


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_beam_search_with_one_beam_is_greedy(kind):
    model, head = build("ffn", fusion=1)
    inputs = {**media(kind, 2), "text_ids": prompt(2, 4)}
    greedy = generate(model, head, inputs, max_new_tokens=8, eos_id=EOS)
    beam = beam_search(model, head, inputs, max_new_tokens=8, eos_id=EOS, num_beams=1)
    assert torch.equal(beam.tokens, greedy.tokens) and torch.equal(beam.lengths, greedy.lengths)


def test_beam_search_scores_at_least_the_greedy_path():
    model, head = build("all")
    inputs = {**media("image", 2), "text_ids": prompt(2, 4)}
    greedy = generate(model, head, inputs, max_new_tokens=6, eos_id=EOS, min_new_tokens=6)
    beam = generate(model, head, inputs, max_new_tokens=6, eos_id=EOS, min_new_tokens=6, num_beams=4,
                    length_penalty=0.0)
    assert beam.tokens.shape == (2, 6)
    # same length, no penalty: the best of 4 beams is at least as likely as the greedy path
    assert bool((beam.scores >= greedy.scores - 1e-4).all()), (beam.scores, greedy.scores)


@pytest.mark.parametrize("kind", ["image", "audio", "text"])
@pytest.mark.parametrize("beams", [1, 3])
def test_mixed_prompt_lengths_equal_each_row_alone(kind, beams):
    model, head = build("kv", fusion=1)
    lengths = [6, 3, 4]
    B, L = len(lengths), max(lengths)
    ids = prompt(B, L)
    pad = torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]  # (B, L) right padding
    batch_media = media(kind, B)
    kw = dict(max_new_tokens=7, eos_id=EOS, num_beams=beams)
    batched = generate(model, head, {**batch_media, "text_ids": ids.masked_fill(pad, 0), "text_padding_mask": pad},
                       **kw)
    assert_rows_alone_equal(model, head, batched, batch_media, ids, lengths, kw)


def assert_rows_alone_equal(model, head, batched, batch_media: dict, ids: torch.Tensor, lengths: list[int],
                            kw: dict, starts: list[int] | None = None) -> None:
    """Each row of a padded batch's output equals the row generated alone (its prompt cut to its length,
    with its own causal start when ``starts`` is given)."""
    for b, n in enumerate(lengths):
        alone_inputs = {k: v[b:b + 1] for k, v in batch_media.items()} | {"text_ids": ids[b:b + 1, :n]}
        extra = {} if starts is None else {"text_causal_start": torch.tensor([starts[b]])}
        alone = generate(model, head, alone_inputs, **kw, **extra)
        m = int(alone.lengths[0])
        assert int(batched.lengths[b]) == m
        assert torch.equal(batched.tokens[b, :m], alone.tokens[0, :m]), b
        torch.testing.assert_close(batched.scores[b], alone.scores[0], rtol=0, atol=1e-4)


def test_sampling_is_reproducible_and_top_p_near_zero_is_greedy():
    model, head = build("ffn")
    inputs = {**media("image", 2), "text_ids": prompt(2, 4)}
    kw = dict(max_new_tokens=6, eos_id=EOS, do_sample=True, temperature=1.5)
    a = generate(model, head, inputs, **kw, generator=torch.Generator().manual_seed(7))
    b = generate(model, head, inputs, **kw, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens)
    nucleus = generate(model, head, inputs, max_new_tokens=6, eos_id=EOS, do_sample=True, top_p=1e-6,
                       generator=torch.Generator().manual_seed(1))
    greedy = generate(model, head, inputs, max_new_tokens=6, eos_id=EOS)
    assert torch.equal(nucleus.tokens, greedy.tokens)


def test_min_new_tokens_and_no_repeat_ngrams():
    model, head = build("all")
    inputs = {"text_ids": prompt(2, 3)}
    # a head that always prefers eos, then token 7: eos is banned before min_new_tokens
    with torch.no_grad():
        head.proj.weight.zero_()
        head.norm.weight.zero_()
        head.norm.bias.zero_()
        bias = torch.zeros(VOCAB)
        bias[EOS], bias[7], bias[8] = 3.0, 2.0, 1.0
    biased = lambda h: head(h) + bias  # noqa: E731
    out = generate(model, biased, inputs, max_new_tokens=6, eos_id=EOS, min_new_tokens=4)
    assert out.tokens[:, :4].eq(7).all() and out.tokens[:, 4].eq(EOS).all() and out.lengths.tolist() == [5, 5]
    out = generate(model, biased, inputs, max_new_tokens=6, eos_id=EOS, min_new_tokens=6, no_repeat_ngram_size=2)
    for row in out.tokens.tolist():
        bigrams = list(zip(row, row[1:]))
        assert len(bigrams) == len(set(bigrams)), row
    assert out.tokens[0, :3].tolist() == [7, 7, 8]  # (7, 7) may not come twice: then 8
