"""Captioning scores: BLEU and ROUGE-L by hand, CIDEr-D against an independent implementation."""

import math
import shutil
from collections import Counter

import pytest

import tasks.text_metrics as text_metrics
from tasks.text_metrics import captioning_baseline, captioning_scores, most_frequent_caption


def ngram_counts(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def cider_d(candidates, references, sigma=6.0):
    """CIDEr-D written from the paper (Vedantam et al. 2015; the variant the COCO server reports):
    per n = 1..4, tf-idf vectors with document frequencies over the evaluated references, the hypothesis
    counts clipped at the reference's, a Gaussian length penalty (sigma 6), averaged over references and n,
    times 10. Inputs are already tokenized: id -> "w w w", id -> ["w w", ...]."""
    n_images = len(references)
    df = Counter()
    for refs in references.values():
        df.update({g for r in refs for n in range(1, 5) for g in ngram_counts(r.split(), n)})

    def tfidf(sentence, n):
        return {g: c * (math.log(n_images) - math.log(max(1.0, df[g])))
                for g, c in ngram_counts(sentence.split(), n).items()}

    scores = {}
    for i, cand in candidates.items():
        total = 0.0
        for n in range(1, 5):
            vc = tfidf(cand, n)
            per_ref = []
            for ref in references[i]:
                vr = tfidf(ref, n)
                dot = sum(min(w, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, w in vc.items())  # clipped
                norms = math.sqrt(sum(w * w for w in vc.values())) * math.sqrt(sum(w * w for w in vr.values()))
                cos = dot / norms if norms else 0.0
                delta = len(cand.split()) - len(ref.split())
                per_ref.append(cos * math.exp(-delta ** 2 / (2 * sigma ** 2)))
            total += sum(per_ref) / len(per_ref)
        scores[i] = 10 * total / 4
    return sum(scores.values()) / len(scores), scores


CANDIDATES = {1: "a man riding a wave on a surfboard", 2: "a dog sitting on a couch",
              3: "two cats sleeping on a bed", 4: "a plate of food with broccoli"}
REFERENCES = {1: ["a man rides a wave on top of a surfboard", "a surfer riding a large wave"],
              2: ["a brown dog lying on a couch", "a dog on the sofa", "a small dog sits on a couch"],
              3: ["two cats curled up on a bed", "a pair of cats sleeping on a blanket"],
              4: ["a plate of broccoli and rice", "food on a white plate", "a plate with broccoli and meat"]}


def test_cider_d_matches_an_independent_implementation():
    out = captioning_scores(CANDIDATES, REFERENCES, meteor=False)
    expected, per_item = cider_d(CANDIDATES, REFERENCES)
    assert out["cider"] == pytest.approx(expected, rel=1e-9)
    assert 0.1 < expected < 10  # a non-degenerate case
    for i in CANDIDATES:
        assert out["per_item"][i]["cider"] == pytest.approx(per_item[i], rel=1e-9)


def test_cider_d_of_a_single_item_is_zero():
    # the IDF comes from the evaluated references: with one item every n-gram is in all (1) documents
    out = captioning_scores({0: "a man riding a wave"}, {0: ["a man riding a wave"]}, meteor=False)
    assert out["cider"] == 0.0
    assert out["bleu4"] == pytest.approx(1.0)


def test_bleu_and_rouge_by_hand():
    # item A: "the cat sat on a mat" vs "the cat sat on the mat": matches 5/6, 3/5, 2/4, 1/3
    # item B: "a dog runs" vs the closest reference in length ("the dog runs": 3 words): with the other
    # reference "a dog runs fast" clipping per reference, matches 3/3, 2/2, 1/1, 0/0
    preds = {"A": "The cat sat on a mat.", "B": "A dog runs!"}
    refs = {"A": ["the cat sat on the mat"], "B": ["a dog runs fast", "the dog runs"]}
    out = captioning_scores(preds, refs, meteor=False)
    # corpus BLEU: counts summed over items, brevity penalty 1 (9 hypothesis words, 9 closest-reference words)
    assert out["bleu1"] == pytest.approx(8 / 9, rel=1e-6)
    assert out["bleu2"] == pytest.approx((8 / 9 * 5 / 7) ** (1 / 2), rel=1e-6)
    assert out["bleu4"] == pytest.approx((8 / 9 * 5 / 7 * 3 / 5 * 1 / 3) ** (1 / 4), rel=1e-6)
    assert out["per_item"]["A"]["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4), rel=1e-6)
    # ROUGE-L A: LCS 5 of 6 and 6 words -> P = R = 5/6 -> F = 5/6; B: best P = R = 1 against "a dog runs fast"
    # gives P=1, R=3/4 and against "the dog runs" P=R=2/3: max P 1, max R 3/4
    f_b = (1 + 1.2 ** 2) * 1 * 0.75 / (0.75 + 1.2 ** 2 * 1)
    assert out["rouge_l"] == pytest.approx((5 / 6 + f_b) / 2)
    assert out["n"] == 2


def test_baseline_and_missing_java(monkeypatch):
    assert most_frequent_caption(["A dog.", "a cat", "a dog", "A cat!", "a DOG"]) == "a dog"
    monkeypatch.setattr(text_metrics.shutil, "which", lambda name: None)  # as on a machine without Java
    out = captioning_baseline(["a dog on a couch", "a dog on a couch", "two cats"], REFERENCES, meteor=True)
    assert out["prediction"] == "a dog on a couch" and out["meteor"] is None and out["meteor_ran"] is False
    model = captioning_scores(CANDIDATES, REFERENCES, meteor=False)
    assert out["cider"] < model["cider"] and out["bleu4"] < model["bleu4"]
    with pytest.raises(ValueError, match="same ids"):
        captioning_scores({1: "x"}, REFERENCES)


@pytest.mark.slow  # ~10 s: METEOR's Java process loads its paraphrase table
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_runs_with_java():
    out = captioning_scores({1: "a man riding a wave", 2: "a dog"},
                            {1: ["a man riding a wave"], 2: ["a cat on a mat"]}, meteor=True)
    assert out["meteor_ran"] is True
    assert 0.3 < out["meteor"] < 1.0  # item 1 is a perfect match, item 2 nearly none
