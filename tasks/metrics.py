"""Retrieval metrics of pretraining validation (both directions of each modality pair), on
``tasks.retrieval``'s chunked exact ranks: no N x N similarity matrix is built."""

from __future__ import annotations

import torch

from tasks.retrieval import best_positive_ranks, positives_per_query


def recall_at_k(queries: torch.Tensor, candidates: torch.Tensor, ks=(1, 5),
                labels: torch.Tensor | None = None, chunk_size: int = 4096) -> dict[int, float]:
    """Recall@k of cross-modal retrieval.

    Query i's positive is candidate i, and with ``labels`` every candidate j with ``labels[j] ==
    labels[i]`` too: corpora repeat captions ("a handwritten digit 7" describes every 7), and a text
    equal to the query's own caption is a correct answer, not a miss.

    Args:
        queries: (N, E) unit vectors.
        candidates: (N, E) unit vectors, row i paired with query i.
        ks: cut-offs.
        labels: (N,) ints, equal for rows whose paired content is identical; None: all distinct.
        chunk_size: rows scored at once (see ``tasks.retrieval.best_positive_ranks``).
    Returns:
        k -> fraction of queries with a positive in the top k (ties count against the query).
    """
    lab = _labels(queries.shape[0], labels)
    ranks, _ = best_positive_ranks(queries, candidates, lab, lab, chunk_size)  # (N,) 1-based
    return {k: int((ranks <= k).sum()) / len(ranks) for k in ks}


def chance_at_1(n: int, labels: torch.Tensor | None = None) -> float:
    """Expected R@1 of a random ranking: the mean share of positives among the N candidates."""
    if n == 0:
        return 0.0
    lab = _labels(n, labels)
    return float(positives_per_query(lab, lab).double().mean()) / n


def _labels(n: int, labels: torch.Tensor | None) -> torch.Tensor:
    return torch.arange(n) if labels is None else labels


def retrieval_metrics(emb: dict[str, torch.Tensor], pairs, ks=(1, 5),
                      labels: dict[tuple, torch.Tensor] | None = None) -> dict[str, float]:
    """``<a>_to_<b>/r@k`` for both directions of each (a, b) pair present in ``emb`` (modality -> (N, E)),
    with ``<a>_<b>/n`` and the chance level ``<a>_<b>/chance@1`` next to them.

    ``labels`` maps a pair to its (N,) duplicate labels (see ``recall_at_k``)."""
    out: dict[str, float] = {}
    for a, b in pairs:
        if a not in emb or b not in emb:
            continue
        n = emb[a].shape[0]
        lab = (labels or {}).get((a, b))
        for q, c in ((a, b), (b, a)):
            for k, v in recall_at_k(emb[q], emb[c], ks, lab).items():
                out[f"{q}_to_{c}/r@{k}"] = v
        out[f"{a}_{b}/n"] = float(n)
        out[f"{a}_{b}/chance@1"] = chance_at_1(n, lab)
    return out


def content_labels(keys: list) -> torch.Tensor:
    """(N,) ints: equal where ``keys`` (any hashables, e.g. token-id tuples) are equal."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.long)
