"""Retrieval and accuracy metrics over whole validation sets."""

from __future__ import annotations

import torch


def recall_at_k(queries: torch.Tensor, candidates: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    """Recall@k when query i's only positive is candidate i.

    Args:
        queries: (N, E) unit vectors.
        candidates: (N, E) unit vectors, row i paired with query i.
        ks: cut-offs.
    Returns:
        k -> fraction of queries whose positive ranks in the top k (ties count against the query).
    """
    sim = queries.float() @ candidates.float().t()  # (N, N)
    positive = sim.diagonal()[:, None]  # (N, 1)
    # rank = number of candidates scoring at least as high as the positive, the positive excluded
    rank = (sim >= positive).sum(1) - 1  # (N,)
    return {k: float((rank < k).float().mean()) for k in ks}


def retrieval_metrics(emb: dict[str, torch.Tensor], pairs, ks=(1, 5)) -> dict[str, float]:
    """``<a>_to_<b>/r@k`` for both directions of each (a, b) pair present in ``emb`` (modality -> (N, E)),
    with the chance level ``<a>_<b>/chance@1`` = 1/N next to it."""
    out: dict[str, float] = {}
    for a, b in pairs:
        if a not in emb or b not in emb:
            continue
        n = emb[a].shape[0]
        for q, c in ((a, b), (b, a)):
            for k, v in recall_at_k(emb[q], emb[c], ks).items():
                out[f"{q}_to_{c}/r@{k}"] = v
        out[f"{a}_{b}/n"] = float(n)
        out[f"{a}_{b}/chance@1"] = 1.0 / max(n, 1)
    return out
