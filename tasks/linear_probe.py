"""Linear probe of frozen features (CLIP_benchmark's protocol, with scikit-learn's logistic regression
instead of its torch training loop): standardise, pick the L2 strength on a held-out part of the train
split, refit on the whole train split, score the test split."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from tasks.zero_shot import mean_per_class_recall


def linear_probe(train_features, train_labels, test_features, test_labels,
                 regularization: Sequence[float] = (0.01, 0.1, 1.0), val_fraction: float = 0.2, seed: int = 0,
                 max_iter: int = 500, n_classes: int | None = None) -> dict:
    """Accuracy of a logistic-regression probe trained on frozen train features, on the test features.

    Args:
        train_features: (N_train, D) features (torch tensor or array-like).
        train_labels: (N_train,) class indices.
        test_features: (N_test, D) features.
        test_labels: (N_test,) class indices.
        regularization: candidate inverse L2 strengths (sklearn's ``C``), scored on a held-out
            ``val_fraction`` of the train split (stratified when every class has 2+ samples); one value
            skips the sweep. A few values keep it to seconds for thousands of samples of dim 256-768.
        val_fraction: share of the train split held out for the sweep.
        seed: seed of the held-out split (lbfgs itself is deterministic).
        max_iter: lbfgs iterations per fit.
        n_classes: number of classes for the chance level; None: distinct labels in train and test.
    Returns:
        ``acc1``, ``mean_per_class_recall`` (test), ``majority_acc1`` and ``majority_mean_per_class_recall``
        (the baseline: the most frequent train class predicted for every test sample), ``chance``
        (1 / classes), ``regularization`` (the chosen C), ``n_train``, ``n_test`` (floats), ``val_accuracy``
        (C -> held-out accuracy; empty without a sweep), ``converged`` (bool: the final fit stopped before
        ``max_iter``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _array(train_features, np.float32), _array(train_labels, np.int64)
    x_test, y_test = _array(test_features, np.float32), _array(test_labels, np.int64)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"features {x_train.shape} and {x_test.shape} must be (N, D) with the same D")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test) or len(y_test) == 0:
        raise ValueError("features and labels differ in length, or the test split is empty")
    if len(np.unique(y_train)) < 2:
        raise ValueError("a linear probe needs at least two classes in the train split")

    def fit(c: float, x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: recorded as `converged` instead
            return model.fit(x, y)

    val_accuracy: dict[float, float] = {}
    if len(regularization) > 1:
        counts = np.bincount(y_train)
        n_val, n_present = round(val_fraction * len(y_train)), int((counts > 0).sum())
        # stratify when sklearn can: 2+ samples per class and room for every class on both sides
        can = counts[counts > 0].min() >= 2 and n_present <= min(n_val, len(y_train) - n_val)
        stratify = y_train if can else None
        x_fit, x_val, y_fit, y_val = train_test_split(x_train, y_train, test_size=val_fraction, random_state=seed,
                                                      stratify=stratify)
        for c in regularization:
            val_accuracy[float(c)] = float(fit(c, x_fit, y_fit).score(x_val, y_val))
        best = max(val_accuracy, key=val_accuracy.get)  # ties: the first, i.e. the strongest listed first
    else:
        best = float(regularization[0])
    model = fit(best, x_train, y_train)
    pred = model.predict(x_test)
    classes = n_classes or len(np.union1d(y_train, y_test))
    majority = np.bincount(y_train).argmax()
    return {
        "acc1": float((pred == y_test).mean()),
        "mean_per_class_recall": mean_per_class_recall(y_test, pred),
        "majority_acc1": float((y_test == majority).mean()),
        "majority_mean_per_class_recall": mean_per_class_recall(y_test, np.full_like(y_test, majority)),
        "chance": 1.0 / classes,
        "regularization": best,
        "n_train": float(len(y_train)), "n_test": float(len(y_test)),
        "val_accuracy": val_accuracy,
        "converged": bool(model[-1].n_iter_.max() < max_iter),
    }


def _array(x, dtype) -> np.ndarray:
    """A torch tensor or array-like as a numpy array of ``dtype``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)
