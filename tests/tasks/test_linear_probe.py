"""Linear probe on features with a known answer: separable classes, and labels carrying no signal."""

import numpy as np
import pytest
import torch

from tasks.linear_probe import linear_probe


def blobs(n, d, classes, spread, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = np.eye(classes, d) * 4.0
    return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def test_separable_classes_are_learned():
    x, y = blobs(400, 16, 3, 0.5, seed=0)
    y_test = y[300:].copy()
    out = linear_probe(torch.from_numpy(x[:300]), torch.from_numpy(y[:300]), x[300:], y_test)
    assert out["acc1"] == 1.0 and out["mean_per_class_recall"] == 1.0
    # baseline by hand: the most frequent train class, predicted for every test sample
    majority = np.bincount(y[:300]).argmax()
    assert out["majority_acc1"] == pytest.approx(float((y_test == majority).mean()))
    # its mean per-class recall: 1 for the majority class, 0 for the other two (all present in test)
    assert out["majority_mean_per_class_recall"] == pytest.approx(1 / 3)
    assert out["chance"] == pytest.approx(1 / 3)
    assert set(out["val_accuracy"]) == {0.01, 0.1, 1.0} and out["regularization"] in out["val_accuracy"]
    assert out["n_train"] == 300 and out["n_test"] == 100 and out["converged"]
    assert linear_probe(x[:300], y[:300], x[300:], y_test) == out  # deterministic


def test_noise_labels_stay_near_chance():
    x, _ = blobs(600, 8, 2, 1.0, seed=1)
    y = np.random.default_rng(2).integers(0, 4, 600)  # unrelated to x
    out = linear_probe(x[:400], y[:400], x[400:], y[400:], regularization=[0.1])
    assert out["val_accuracy"] == {} and out["regularization"] == 0.1
    assert out["acc1"] < 0.45  # chance is 0.25; far from what the separable case reaches
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(x[:10], np.zeros(10), x[10:20], np.zeros(10))
