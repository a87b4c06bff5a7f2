"""Generation from a multi-turn prompt attends as training did: with ``text_causal_start`` = the first answer
token, the prompt's tokens from there on are causal, and each cached decode step's logits equal a full
prefix-LM forward's over prompt + generated with the same causal start (fp32, 1e-5) for image+text prompts
under every expert policy; a one-turn prompt decodes as before."""

from __future__ import annotations

import pytest
import torch

from model.generation import beam_search, generate, prefill

from test_generation import EOS, assert_decode_equals_full_forward, assert_rows_alone_equal, build, media, prompt


@pytest.mark.parametrize("policy", ["all", "ffn", "kv"])
@pytest.mark.parametrize("fusion", [0, 1])
def test_two_turn_prompt_decodes_as_the_full_forward_at_every_step(policy, fusion):
    model, head = build(policy, fusion)
    B, L, steps = 2, 9, 5
    ids = prompt(B, L)  # bos, question 1, answer 1 + eos, question 2: the answer starts at 3 or 4
    start = torch.tensor([3, 4])
    inputs = {**media("image", B), "text_ids": ids}
    hidden, state = prefill(model, inputs, text_causal_start=start)
    bidirectional, _ = prefill(model, inputs)
    # the causal part of the prompt changes what its last token computes: the test can tell them apart
    assert not torch.allclose(head(hidden), head(bidirectional), atol=1e-3)
    assert_decode_equals_full_forward(model, head, inputs, hidden, state, start, steps)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_one_turn_prompt_is_unchanged(kind):
    # a causal start at (or past) the prompt's end is the whole prompt bidirectional: what None gives
    model, head = build("kv", fusion=1)
    B, L = 2, 5
    inputs = {**media(kind, B), "text_ids": prompt(B, L)}
    kw = dict(max_new_tokens=6, eos_id=EOS)
    plain = generate(model, head, inputs, **kw)
    for start in (torch.full((B,), L), torch.full((B,), L + 3)):
        same = generate(model, head, inputs, **kw, text_causal_start=start)
        assert torch.equal(same.tokens, plain.tokens) and torch.equal(same.lengths, plain.lengths)
        torch.testing.assert_close(same.scores, plain.scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("beams", [1, 3])
def test_multi_turn_batch_of_mixed_lengths_equals_each_row_alone(beams):
    model, head = build("ffn", fusion=1)
    lengths, starts = [8, 5, 7], [4, 5, 3]  # the second row is one-turn (its answer starts at its end)
    B, L = len(lengths), max(lengths)
    ids = prompt(B, L)
    pad = torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]  # (B, L) right padding
    batch_media = media("image", B)
    kw = dict(max_new_tokens=6, eos_id=EOS, num_beams=beams)
    # the causal start may come as the keyword or under the model's own input key
    batched = generate(model, head, {**batch_media, "text_ids": ids.masked_fill(pad, 0), "text_padding_mask": pad,
                                     "text_causal_start": torch.tensor(starts)}, **kw)
    assert_rows_alone_equal(model, head, batched, batch_media, ids, lengths, kw, starts)  # the keyword form


def test_beam_search_with_one_beam_is_greedy_on_a_multi_turn_prompt():
    model, head = build("all")
    inputs = {**media("image", 2), "text_ids": prompt(2, 8)}
    start = torch.tensor([3, 5])
    greedy = generate(model, head, inputs, max_new_tokens=6, eos_id=EOS, text_causal_start=start)
    beam = beam_search(model, head, inputs, max_new_tokens=6, eos_id=EOS, num_beams=1, text_causal_start=start)
    assert torch.equal(beam.tokens, greedy.tokens) and torch.equal(beam.lengths, greedy.lengths)


def test_bad_causal_starts_are_refused():
    model, head = build("all")
    inputs = {"text_ids": prompt(2, 4)}
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        prefill(model, inputs, text_causal_start=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=">= 0"):
        generate(model, head, inputs, max_new_tokens=2, eos_id=EOS, text_causal_start=torch.tensor([-1, 2]))
