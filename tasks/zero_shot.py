"""Zero-shot classification: class embeddings from prompt templates (open_clip's recipe) and the
classification metrics CLIP_benchmark reports, with their chance levels."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def build_zero_shot_classifier(encode_text: Callable[[list[str]], torch.Tensor], class_names: Sequence[str],
                               templates: Sequence[str | Callable[[str], str]],
                               classes_per_batch: int = 10) -> torch.Tensor:
    """(D, C) classifier: column c is the mean of class c's L2-normalised prompt embeddings, re-normalised
    (open_clip's ``build_zero_shot_classifier``).

    Args:
        encode_text: list of n prompts -> (n, D) embeddings (the model's text tower; normalised here).
        class_names: the C class names, e.g. ["0", "1", ...] or ["zero", "one", ...].
        templates: T prompt templates, each a format string with one "{}" ("a handwritten digit {}.") or
            a callable class name -> prompt.
        classes_per_batch: classes encoded per ``encode_text`` call (T prompts each).
    """
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    fill = [(t.format if isinstance(t, str) else t) for t in templates]
    columns = []
    with torch.no_grad():
        for start in range(0, len(class_names), classes_per_batch):
            names = class_names[start:start + classes_per_batch]
            prompts = [f(name) for name in names for f in fill]  # class-major: (classes x T)
            emb = F.normalize(encode_text(prompts).float(), dim=-1)  # (classes * T, D)
            emb = emb.reshape(len(names), len(fill), -1).mean(1)  # (classes, D)
            columns.append(F.normalize(emb, dim=-1))
    return torch.cat(columns).t()  # (D, C)


def zero_shot_logits(features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(N, C) cosine similarities of L2-normalised image (or audio) features with the classifier columns.

    Args:
        features: (N, D) embeddings from the model's other tower.
        classifier: (D, C) from ``build_zero_shot_classifier``.
    """
    return F.normalize(features.float(), dim=-1) @ classifier.to(features.device).float()


def classification_metrics(logits, labels, class_names: Sequence[str]) -> dict:
    """Top-1, top-5 (k capped at C), mean per-class recall (balanced accuracy, as CLIP_benchmark) and the
    confusion matrix, next to their chance levels and the majority-class accuracy of ``labels``.

    Args:
        logits: (N, C) scores (any monotone scores: logits, similarities, probabilities).
        labels: (N,) true class indices in [0, C).
        class_names: the C class names (the confusion matrix's order).
    Returns:
        CLIP_benchmark's names: ``acc1``, ``acc5`` (top-5, k capped at C), ``mean_per_class_recall`` (over
        the classes present in ``labels``), ``n``, ``n_classes``, ``chance_acc1`` (1/C), ``chance_acc5``
        (min(5, C)/C), ``chance_mean_per_class_recall`` (1/C), ``majority_acc1`` (always answering the most
        frequent class of ``labels``) (floats); ``per_class_recall`` (C floats, None for a class absent from
        ``labels``), ``confusion`` (C x C list of lists of ints, rows true class, columns predicted).
    """
    from sklearn.metrics import confusion_matrix

    scores = torch.as_tensor(logits).float()  # (N, C)
    y = torch.as_tensor(labels).long()  # (N,)
    c = len(class_names)
    if scores.ndim != 2 or scores.shape != (len(y), c):
        raise ValueError(f"logits {tuple(scores.shape)} do not match {len(y)} labels x {c} classes")
    if len(y) == 0:
        raise ValueError("no samples to score")
    if int(y.min()) < 0 or int(y.max()) >= c:
        raise ValueError(f"labels must lie in [0, {c})")
    k = min(5, c)
    top = scores.topk(k, dim=1).indices  # (N, k), best first
    pred = top[:, 0].numpy()
    truth = y.numpy()
    cm = confusion_matrix(truth, pred, labels=np.arange(c))  # (C, C)
    support = cm.sum(1)
    counts = np.bincount(truth, minlength=c)
    return {
        "acc1": float((top[:, 0] == y).double().mean()),
        "acc5": float((top == y[:, None]).any(1).double().mean()),
        "mean_per_class_recall": mean_per_class_recall(truth, pred),
        "n": float(len(y)), "n_classes": float(c),
        "chance_acc1": 1.0 / c, "chance_acc5": k / c, "chance_mean_per_class_recall": 1.0 / c,
        "majority_acc1": float(counts.max()) / len(y),
        "per_class_recall": [float(cm[i, i] / support[i]) if support[i] else None for i in range(c)],
        "confusion": cm.tolist(),
    }


def mean_per_class_recall(truth, pred) -> float:
    """sklearn's balanced accuracy: the mean recall over the classes present in ``truth``, without its
    warning when a prediction names a class absent from ``truth`` (expected with many classes).

    Args:
        truth: (N,) true class indices.
        pred: (N,) predicted class indices.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(truth, pred))
