"""Text generation with a KV cache (litgpt's ``generate`` / ``KVCache`` shape): greedy, sampling, beam search.

The prompt (media + prompt text) is prefilled once; then one token per step runs through the blocks
against the cached keys and values. What a full forward of the prefix-LM would compute is what decoding
computes, position for position (``MultiwayModel.forward`` over prompt + generated tokens with the same
``text_causal_start``, or the prompt length when none is given):

* a one-turn prompt is one bidirectional prefix; a multi-turn prompt (earlier answers inside it) is
  attended as in training when ``text_causal_start`` (B,) names its first answer token: media and the
  first prompt bidirectional, the prompt's tokens from that index on causal (a later question sees the
  earlier answers, nothing before sees them); a new token attends to everything before it in both cases;
* a cached token keeps the expert it was computed with (media tokens their modality's, text the text
  expert's); a new token is routed as a text token of the *whole* sequence (``Layout.within``), so where a
  block has a fusion expert, a multimodal sequence's new tokens use it exactly as in the full forward;
* the prefix never sees the response (media after the text included), a response token sees the whole
  prefix and the response up to itself;
* each row keeps its own text positions: a batch of prompts of different lengths (right-padded, padding
  masked) gives each row what it gives alone.

A relative position bias (``rel_pos_buckets``) needs the text to be the last segment of the sequence (its
positions would move the media after it at every step); other layouts are refused for it.

Usage::

    out = generate(model, head, {"pixels": px, "text_ids": prompt, "text_padding_mask": pad},
                   max_new_tokens=32, eos_id=3)           # greedy; sampling: do_sample=True, top_p=0.9
    out.tokens  # (B, N) new token ids, ``pad_id`` after each row's end; out.lengths (B,)
    generate(model, head, {"text_ids": two_turns}, max_new_tokens=32, eos_id=3,
             text_causal_start=first_answer)  # (B,): a multi-turn prompt attended as in training
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .attention import LayerCache
from .layout import Layout


@dataclass
class GenerationOutput:
    """What ``generate`` returns.

    Args:
        tokens: (B, N) generated ids (eos included), ``pad_id`` after a row's end.
        lengths: (B,) generated tokens per row, eos included.
        scores: (B,) beam search: the chosen hypothesis's length-penalised log-probability; else the sum
            of the chosen tokens' log-probabilities.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor


class DecodeState:
    """Everything decoding keeps between steps: one ``LayerCache`` per block, each cached key's validity and
    logical sequence position, each row's next text position and the whole sequence's modalities.

    Args:
        layers: number of blocks.
        key_valid: (B, T) bool, False for padding keys of the prefix.
        key_pos: (B, T) int64 sequence positions of the prefix keys (for a relative position bias).
        next_text_pos: (B,) int64 text position of each row's next token (its prompt length).
        next_seq_pos: (B,) int64 sequence position of each row's next token.
        modalities: the modalities of the whole sequence.
    """

    def __init__(self, layers: int, key_valid: torch.Tensor, key_pos: torch.Tensor, next_text_pos: torch.Tensor,
                 next_seq_pos: torch.Tensor, modalities: tuple[str, ...]):
        self.caches = [LayerCache() for _ in range(layers)]
        self.key_valid, self.key_pos = key_valid, key_pos
        self.all_valid = bool(key_valid.all())  # no padding key: decode steps need no mask
        self.next_text_pos, self.next_seq_pos = next_text_pos, next_seq_pos
        self.modalities = modalities

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (B',) in that order (beam search)."""
        for c in self.caches:
            c.reorder(index)
        self.key_valid, self.key_pos = self.key_valid[index], self.key_pos[index]
        self.next_text_pos, self.next_seq_pos = self.next_text_pos[index], self.next_seq_pos[index]


def _prompt_lengths(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    ids = inputs["text_ids"]
    pad = inputs.get("text_padding_mask")
    if pad is None:
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    lengths = (~pad).sum(1)
    # right padding only: a row's tokens are its first `length` positions
    if bool((pad.long().diff(dim=1) < 0).any()):
        raise ValueError("text_padding_mask must pad on the right of each prompt")
    return lengths


def _check_room(model, inputs: Mapping[str, torch.Tensor], max_new_tokens: int) -> None:
    """Fail before any work when the longest prompt plus the new tokens overflow the text positions."""
    c = model.config
    room = c.text.max_positions - c.position_offset
    longest = int(_prompt_lengths(inputs).max())
    if longest + max_new_tokens - 1 > room:  # the last new token is never fed back
        raise ValueError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"{room} text positions")


def _causal_start(inputs: Mapping[str, torch.Tensor], text_causal_start: torch.Tensor | None) -> torch.Tensor | None:
    """The keyword, else ``inputs["text_causal_start"]`` (the model's own input key), checked: (B,) int64."""
    start = inputs.get("text_causal_start") if text_causal_start is None else text_causal_start
    if start is None:
        return None
    start = torch.as_tensor(start, dtype=torch.long).reshape(-1)
    B = inputs["text_ids"].shape[0]
    if start.shape[0] != B:
        raise ValueError(f"text_causal_start has {start.shape[0]} entries for a batch of {B} prompts")
    if bool((start < 0).any()):
        raise ValueError(f"text_causal_start must be >= 0, got {start.tolist()}")
    return start


@torch.no_grad()
def prefill(model, inputs: Mapping[str, torch.Tensor], text_causal_start: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, DecodeState]:
    """Run media + prompt once and fill the caches.

    Args:
        model: a ``MultiwayModel``.
        inputs: media and prompt (``text_ids`` (B, L), right-padded with ``text_padding_mask``).
        text_causal_start: (B,) int64, optional (default: ``inputs.get("text_causal_start")``): each row's
            prompt tokens from this text index on attend causally, as in the training forward of a
            multi-turn conversation (its first answer token); an index at or past a row's prompt length
            (or None) leaves that row's whole prompt bidirectional.

    Returns:
        (B, C) the final hidden state of each row's last prompt token (it predicts the first new token),
        and the ``DecodeState``.
    """
    x, layout, padding = model.embed(inputs)  # (B, T, C)
    B, T, _ = x.shape
    text = layout.segment("text")
    encoder = model.encoder
    if encoder.rel_pos is not None and text.stop != T:
        raise NotImplementedError("generation with a relative position bias needs the text as the last segment "
                                  f"of the sequence; this layout is {layout.modalities}")
    from .attention import build_attention_mask

    causal = _causal_start(inputs, text_causal_start)
    if causal is not None:  # text -> sequence indices, as MultiwayModel.forward maps them
        causal = causal.to(x.device) + text.start
    mask = build_attention_mask(padding, causal, T, x.device, None if causal is None else text.stop)
    lengths = _prompt_lengths(inputs).to(x.device)
    key_valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if padding is None else ~padding
    key_pos = torch.arange(T, device=x.device).expand(B, T)
    state = DecodeState(len(encoder.blocks), key_valid, key_pos, lengths, text.start + lengths, layout.modalities)
    hidden = encoder(x, layout, mask, cache=state.caches)  # (B, T, C)
    last = hidden[torch.arange(B, device=x.device), text.start + lengths - 1]  # (B, C)
    return last, state


@torch.no_grad()
def decode_step(model, ids: torch.Tensor, state: DecodeState) -> torch.Tensor:
    """Feed one new token per row, ``ids`` (B,); returns its final hidden state (B, C) and advances ``state``."""
    step = {"text_ids": ids[:, None], "text_positions": state.next_text_pos[:, None]}
    x = model.adapters["text"](step).tokens  # (B, 1, C)
    B = x.shape[0]
    state.key_valid = torch.cat([state.key_valid, torch.ones(B, 1, dtype=torch.bool, device=x.device)], dim=1)
    state.key_pos = torch.cat([state.key_pos, state.next_seq_pos[:, None]], dim=1)
    # (B, 1, 1, T_k): the whole prefix and the response so far; None when every key counts (no padded
    # prompt), which keeps SDPA on its unmasked kernel
    mask = None if state.all_valid else state.key_valid[:, None, None, :]
    bias = None
    if model.encoder.rel_pos is not None:
        bias = model.encoder.rel_pos.between(state.next_seq_pos[:, None], state.key_pos)  # (B, H, 1, T_k)
    layout = Layout.contiguous([("text", 1)]).within(state.modalities)
    hidden = model.encoder(x, layout, mask, cache=state.caches, position_bias=bias)  # (B, 1, C)
    state.next_text_pos = state.next_text_pos + 1
    state.next_seq_pos = state.next_seq_pos + 1
    return hidden[:, 0]


def _ban_repeated_ngrams(logp: torch.Tensor, history: list[list[int]], n: int) -> None:
    """Set to -inf the log-probabilities of tokens that would repeat an n-gram of the row's history."""
    if n <= 0:
        return
    for row, seq in enumerate(history):
        if len(seq) < n - 1:
            continue
        prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
        if banned:
            logp[row, banned] = float("-inf")


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p  # a token is dropped when those before it already reach top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@torch.no_grad()
def generate(model, head: Callable[[torch.Tensor], torch.Tensor], inputs: Mapping[str, torch.Tensor], *,
             max_new_tokens: int, eos_id: int, pad_id: int = 0, min_new_tokens: int = 0, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, num_beams: int = 1, length_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0, generator: torch.Generator | None = None,
             text_causal_start: torch.Tensor | None = None) -> GenerationOutput:
    """Generate text after each row's prompt.

    Args:
        model: a ``MultiwayModel`` (eval mode).
        head: hidden states (..., C) -> logits (..., V), e.g. ``LMHead`` or the tied text embedding.
        inputs: the model's inputs for the media and the prompt (``text_ids`` (B, L), right-padded with
            ``text_padding_mask`` when prompts differ in length).
        max_new_tokens / min_new_tokens: bounds on generated tokens per row (eos counts; eos is banned
            before ``min_new_tokens``).
        eos_id / pad_id: end-of-sequence id; the id written after a row's end.
        do_sample, temperature, top_p: sample instead of taking the most likely token (greedy).
        num_beams, length_penalty: beam search when ``num_beams`` > 1 (a hypothesis scores
            ``sum log p / length ** length_penalty``, as in Hugging Face's).
        no_repeat_ngram_size: no n-gram of this size appears twice in a row's generated tokens (0: off).
        generator: random generator for sampling.
        text_causal_start: (B,) int64, optional (default: ``inputs.get("text_causal_start")``): a
            multi-turn prompt's first answer token; see ``prefill``.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if num_beams > 1:
        if do_sample:
            raise ValueError("beam search with sampling is not supported; pick one")
        return beam_search(model, head, inputs, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                            min_new_tokens=min_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                            no_repeat_ngram_size=no_repeat_ngram_size, text_causal_start=text_causal_start)
    _check_room(model, inputs, max_new_tokens)
    hidden, state = prefill(model, inputs, text_causal_start)
    B = hidden.shape[0]
    device = hidden.device
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    scores = torch.zeros(B, dtype=torch.float32, device=device)
    history: list[list[int]] = [[] for _ in range(B)]
    for t in range(max_new_tokens):
        logp = head(hidden).float().log_softmax(-1)  # (B, V)
        if t < min_new_tokens:
            logp[:, eos_id] = float("-inf")
        _ban_repeated_ngrams(logp, history, no_repeat_ngram_size)
        if do_sample:
            logits = _top_p_filter(logp / max(temperature, 1e-6), top_p)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        else:
            nxt = logp.argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        scores += torch.where(done, torch.zeros_like(scores), logp.gather(1, nxt[:, None])[:, 0])
        tokens[:, t] = nxt
        lengths += (~done).long()
        for row in range(B):
            history[row].append(int(nxt[row]))
        done |= nxt == eos_id
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        hidden = decode_step(model, nxt, state)
    return GenerationOutput(tokens[:, :int(lengths.max())], lengths, scores)


@torch.no_grad()
def beam_search(model, head, inputs: Mapping[str, torch.Tensor], *, max_new_tokens: int, eos_id: int,
                num_beams: int, pad_id: int = 0, min_new_tokens: int = 0, length_penalty: float = 1.0,
                no_repeat_ngram_size: int = 0, text_causal_start: torch.Tensor | None = None) -> GenerationOutput:
    """Beam search per row (``generate`` with ``num_beams`` > 1; arguments as there): ``num_beams`` live
    hypotheses; a hypothesis that emits eos is kept among the row's ``num_beams`` best finished ones, and a
    row is done once it holds ``num_beams`` of them and the worst scores at least its best live beam scored
    at the current length (Hugging Face's rule with ``early_stopping=False``: with one beam it is greedy)."""
    _check_room(model, inputs, max_new_tokens)
    hidden, state = prefill(model, inputs, text_causal_start)
    B, K = hidden.shape[0], num_beams
    device = hidden.device
    index = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,) every row's beams side by side
    state.reorder(index)
    hidden = hidden[index]
    beam_logp = torch.zeros(B, K, device=device)
    beam_logp[:, 1:] = float("-inf")  # the K beams start identical: expand from the first only
    seqs = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    row_done = [False] * B
    for t in range(max_new_tokens):
        logp = head(hidden).float().log_softmax(-1)  # (B*K, V)
        if t < min_new_tokens:
            logp[:, eos_id] = float("-inf")
        _ban_repeated_ngrams(logp, seqs.tolist(), no_repeat_ngram_size)
        V = logp.shape[-1]
        total = (beam_logp.reshape(-1, 1) + logp).reshape(B, K * V)  # (B, K*V)
        top, flat = total.topk(2 * K, dim=-1)  # (B, 2K): room for K live beams after the eos ones
        new_logp = torch.full((B, K), float("-inf"), device=device)
        src = torch.zeros(B, K, dtype=torch.long, device=device)
        tok = torch.full((B, K), pad_id, dtype=torch.long, device=device)
        for b in range(B):
            if row_done[b]:
                src[b] = torch.arange(K, device=device)  # keep the (ignored) beams fed
                continue
            j = 0
            for score, f in zip(top[b].tolist(), flat[b].tolist()):
                beam, token = divmod(f, V)
                if score == float("-inf"):
                    break
                if token == eos_id:
                    hyp = seqs[b * K + beam].tolist() + [token]
                    finished[b].append((score / len(hyp) ** length_penalty, hyp))
                    continue
                new_logp[b, j], src[b, j], tok[b, j] = score, beam, token
                j += 1
                if j == K:
                    break
            finished[b] = sorted(finished[b], key=lambda h: -h[0])[:K]
            if len(finished[b]) == K:
                best_live = new_logp[b].max().item() / (t + 1) ** length_penalty
                if finished[b][-1][0] >= best_live:
                    row_done[b] = True
        if all(row_done) or t == max_new_tokens - 1:
            if t == max_new_tokens - 1:  # out of room: live beams end here
                for b in range(B):
                    if row_done[b]:
                        continue
                    for k in range(K):
                        if new_logp[b, k] == float("-inf"):
                            continue
                        hyp = seqs[b * K + src[b, k]].tolist() + [int(tok[b, k])]
                        finished[b].append((new_logp[b, k].item() / len(hyp) ** length_penalty, hyp))
            break
        flat_src = (torch.arange(B, device=device)[:, None] * K + src).reshape(-1)  # (B*K,)
        state.reorder(flat_src)
        seqs = torch.cat([seqs[flat_src], tok.reshape(-1, 1)], dim=1)
        beam_logp = new_logp
        hidden = decode_step(model, tok.reshape(-1), state)
    best = [max(f, key=lambda h: h[0]) for f in finished]
    N = max(len(h) for _, h in best)
    tokens = torch.full((B, N), pad_id, dtype=torch.long, device=device)
    for b, (_, hyp) in enumerate(best):
        tokens[b, :len(hyp)] = torch.tensor(hyp, device=device)
    lengths = torch.tensor([len(h) for _, h in best], device=device)
    scores = torch.tensor([s for s, _ in best], device=device)
    return GenerationOutput(tokens, lengths, scores)


__all__ = ["DecodeState", "GenerationOutput", "beam_search", "decode_step", "generate", "prefill"]
