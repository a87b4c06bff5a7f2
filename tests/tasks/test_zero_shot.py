"""Zero-shot classifier on a hand-built text encoder, and classification metrics worked out by hand."""

import math

import pytest
import torch

from tasks.zero_shot import build_zero_shot_classifier, classification_metrics, zero_shot_logits

VOCAB = ["cat", "dog", "photo", "picture"]


def bag_of_words(prompts):
    """A text 'encoder': word counts over VOCAB, deliberately not normalised. (n, 4)"""
    return torch.tensor([[p.split().count(w) for w in VOCAB] for p in prompts], dtype=torch.float)


def test_classifier_averages_normalised_prompts():
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return bag_of_words(prompts)

    templates = ["a photo of a {}", lambda name: f"{name} {name} picture"]
    clf = build_zero_shot_classifier(encode, ["cat", "dog"], templates, classes_per_batch=1)
    assert clf.shape == (4, 2)
    assert calls == [["a photo of a cat", "cat cat picture"], ["a photo of a dog", "dog dog picture"]]
    # cat: (1, 0, 1, 0) / sqrt 2 and (2, 0, 0, 1) / sqrt 5, averaged, re-normalised
    mean = [(1 / math.sqrt(2) + 2 / math.sqrt(5)) / 2, 0.0, 1 / math.sqrt(2) / 2, 1 / math.sqrt(5) / 2]
    norm = math.sqrt(sum(v * v for v in mean))
    assert clf[:, 0].tolist() == pytest.approx([v / norm for v in mean])
    assert clf[:, 1].tolist() == pytest.approx([0.0, mean[0] / norm, mean[2] / norm, mean[3] / norm])
    # the same columns in one batch
    assert torch.allclose(build_zero_shot_classifier(bag_of_words, ["cat", "dog"], templates), clf)
    # an image feature close to "cat photo" picks class 0; scale does not matter
    logits = zero_shot_logits(torch.tensor([[10.0, 0, 3, 0], [0, 1, 0, 1]]), clf)
    assert logits.argmax(1).tolist() == [0, 1]
    assert logits[0, 0] == pytest.approx(float(torch.nn.functional.normalize(torch.tensor([10.0, 0, 3, 0]), dim=0)
                                               @ clf[:, 0]))


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [1, 5, 2], [4, 0, 3], [2, 1, 0]])
    labels = torch.tensor([0, 0, 1, 2, 0])  # predictions 0, 1, 1, 0, 0
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["acc1"] == pytest.approx(3 / 5)
    assert m["acc5"] == 1.0 and m["chance_acc5"] == 1.0  # k capped at C = 3
    assert m["per_class_recall"] == pytest.approx([2 / 3, 1.0, 0.0])
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["chance_acc1"] == pytest.approx(1 / 3) and m["chance_mean_per_class_recall"] == pytest.approx(1 / 3)
    assert m["majority_acc1"] == pytest.approx(3 / 5)
    assert m["n"] == 5 and m["n_classes"] == 3


def test_top5_and_absent_classes():
    # 7 classes; sample 0's true class is its 5th best score, sample 1's its 6th
    logits = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1], [7.0, 6, 5, 4, 3, 2, 1]])
    m = classification_metrics(logits, torch.tensor([4, 5]), [str(i) for i in range(7)])
    assert m["acc5"] == 0.5 and m["acc1"] == 0.0 and m["chance_acc5"] == pytest.approx(5 / 7)
    # classes 0-3 and 6 never occur: their recall is None and the mean is over classes 4 and 5 only
    assert m["per_class_recall"] == [None, None, None, None, 0.0, 0.0, None]
    assert m["mean_per_class_recall"] == 0.0
    with pytest.raises(ValueError):
        classification_metrics(logits, torch.tensor([4, 9]), [str(i) for i in range(7)])
