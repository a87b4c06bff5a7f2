"""Retrieval metrics: duplicate captions count as positives, and the chance level accounts for them."""

import pytest
import torch
import torch.nn.functional as F

from tasks.metrics import chance_at_1, content_labels, recall_at_k, retrieval_metrics


def test_duplicate_captions_are_positives():
    # 4 images of two classes; each text is its class's caption, so texts 0/1 and 2/3 are equal
    img = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=-1)
    labels = content_labels([("seven",), ("seven",), ("one",), ("one",)])
    assert labels.tolist() == [0, 0, 1, 1]
    # without labels, the tie between the two identical texts counts against every image query
    assert recall_at_k(img, txt, (1,))[1] == 0.0
    assert recall_at_k(img, txt, (1,), labels)[1] == 1.0
    # text -> image: either image of the caption's class is right
    assert recall_at_k(txt, img, (1,), labels)[1] == 1.0


def test_a_wrong_class_is_still_a_miss():
    img = F.normalize(torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=-1)
    labels = content_labels(["a", "a", "b", "b"])
    assert recall_at_k(img, txt, (1, 2), labels) == {1: 0.0, 2: 0.0}


def test_chance_counts_positives():
    assert chance_at_1(4) == pytest.approx(0.25)
    # two classes of two: half of the candidates are positives for every query
    assert chance_at_1(4, content_labels(["a", "a", "b", "b"])) == pytest.approx(0.5)
    m = retrieval_metrics({"image": torch.eye(3), "text": torch.eye(3)}, [("image", "text")],
                          labels={("image", "text"): content_labels(["x", "y", "x"])})
    assert m["image_text/chance@1"] == pytest.approx((2 + 1 + 2) / 3 / 3)
    assert m["image_to_text/r@1"] == 1.0 and m["text_to_image/r@1"] == 1.0
