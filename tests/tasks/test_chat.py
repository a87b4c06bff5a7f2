"""The chat template: ids and loss mask in one pass, checked token by token against a hand-built
expectation on a multi-turn conversation; the turn-structure rejects; the prompt for generation."""

from __future__ import annotations

import pytest

from tasks.chat import ChatTemplate, ConversationError, count_placeholders, normalize_turns

BOS, EOS = 2, 3


def tok(text: str) -> list[int]:
    """One id per character (ord + 100): the expectation below can be written by hand."""
    return [ord(c) + 100 for c in text]


def test_multi_turn_loss_mask_token_by_token():
    turns = [("system", "be brief"), ("human", "<image>\nhi"), ("gpt", "yo"), ("human", "q2"), ("gpt", "a2")]
    enc = ChatTemplate().encode(turns, tok, bos_id=BOS, eos_id=EOS)
    # hand-built: bos, then each piece tokenized as it is written, answers and their eos supervised
    pieces = [("be brief USER: <image>\nhi ASSISTANT: ", False), ("yo", True), ("<eos>", True),
              (" USER: q2 ASSISTANT: ", False), ("a2", True), ("<eos>", True)]
    ids, mask = [BOS], [False]
    for text, supervised in pieces:
        piece = [EOS] if text == "<eos>" else tok(text)
        ids += piece
        mask += [supervised] * len(piece)
    assert enc.ids == ids
    assert enc.loss_mask == mask
    assert enc.response_start == 1 + len(tok(pieces[0][0]))  # the first answer token
    assert (enc.prompt, enc.answer) == ("q2", "a2")
    # the prompt for generation is exactly the ids before the last answer; its causal part starts where
    # training's does (the first answer), so generation attends to it as training did
    prompt, causal_start = ChatTemplate().encode_prompt(turns[:-1], tok, bos_id=BOS, eos_id=EOS)
    assert prompt == ids[:len(ids) - len(tok("a2")) - 1]
    assert causal_start == enc.response_start and mask[causal_start] and not any(mask[:causal_start])
    one = ChatTemplate().encode_prompt(turns[:2], tok, bos_id=BOS, eos_id=EOS)
    assert one.ids == ids[:enc.response_start] and one.causal_start is None  # one turn: all bidirectional


def test_cut_keeps_alignment_and_refuses_a_sample_with_no_answer_left():
    turns = [("user", "x" * 20), ("assistant", "ok")]
    # bos + "USER: " + 20 x + " ASSISTANT: " = 39 prompt ids, then "ok" + eos
    whole = ChatTemplate().encode(turns, tok, bos_id=BOS, eos_id=EOS)
    assert len(whole.ids) == 42 and sum(whole.loss_mask) == 3
    enc = ChatTemplate().encode(turns, tok, bos_id=BOS, eos_id=EOS, max_tokens=40)
    assert enc.ids == whole.ids[:40] and enc.loss_mask == whole.loss_mask[:40] and sum(enc.loss_mask) == 1
    with pytest.raises(ConversationError) as e:
        ChatTemplate().encode(turns, tok, bos_id=BOS, eos_id=EOS, max_tokens=39)
    assert e.value.reason == "no_supervised_tokens"


@pytest.mark.parametrize("turns, reason", [
    ([("user", "a"), ("robot", "b")], "unknown_role"),
    ([("user", "a"), ("assistant", "  ")], "empty_response"),
    ([("user", "a"), ("user", "b"), ("assistant", "c")], "turns_not_alternating"),
    ([("assistant", "a"), ("user", "b")], "turns_not_alternating"),
    ([("user", "a")], "turns_not_alternating"),
    ([], "turns_not_alternating"),
])
def test_turn_structure_rejects(turns, reason):
    with pytest.raises(ConversationError) as e:
        normalize_turns(turns)
    assert e.value.reason == reason


def test_placeholders_are_counted_outside_answers():
    turns = normalize_turns([("human", "<image> and <audio>"), ("gpt", "<image>")])
    assert count_placeholders(turns) == {"image": 1, "audio": 1}
