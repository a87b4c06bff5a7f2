"""WER / CER by hand, and the empty-transcript baseline."""

import pytest

from tasks.text_metrics import asr_baseline, asr_scores


def test_wer_and_cer_by_hand():
    preds = ["Hello, World!", "the cat sat", "a big dog barks"]
    refs = ["hello world", "The cat sat on.", "a dog barks"]
    out = asr_scores(preds, refs)
    # after normalisation: 1 equal; 2 deletes "on" of "the cat sat on" (1 of 4 words); 3 inserts "big"
    # (1 edit for 3 reference words)
    assert out["per_utterance_wer"] == pytest.approx([0.0, 1 / 4, 1 / 3])
    assert out["wer"] == pytest.approx((0 + 1 + 1) / (2 + 4 + 3))
    # characters (spaces count): "the cat sat" vs "the cat sat on" -> 3 deletions (" on") of 14;
    # "a big dog barks" vs "a dog barks" -> 4 insertions ("big ") of 11; 11 chars of "hello world"
    assert out["cer"] == pytest.approx((0 + 3 + 4) / (11 + 14 + 11))
    assert out["reference_words"] == 9 and out["reference_chars"] == 36 and out["n"] == 3


def test_substitutions_count_once():
    out = asr_scores(["a cat sat"], ["a hat sat"])
    assert out["wer"] == pytest.approx(1 / 3) and out["cer"] == pytest.approx(1 / 9)


def test_empty_transcripts():
    refs = ["a b c", "hello there"]
    base = asr_baseline(refs)
    assert base["wer"] == 1.0 and base["cer"] == 1.0 and base["per_utterance_wer"] == [1.0, 1.0]
    # a model that is silent on one utterance only: that one is all deletions
    out = asr_scores(["a b c", "?!"], refs)
    assert out["per_utterance_wer"] == [0.0, 1.0] and out["wer"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="non-empty reference"):
        asr_scores(["x"], ["..."])
