"""Exact cross-modal retrieval ranks, computed in chunks: memory is bounded by the chunk size, never N x M.

A candidate is a positive of a query when their labels are equal (CLIP_benchmark's semantics: an image
with five captions has five positive texts, and a hit is ANY of them in the top k). The rank of a query
is 1 + the number of negatives scoring at least as high as its best positive, so ties count against the
query (a negative equal to the positive is not a hit at k = 1).

How the chunks go: queries and candidates are ordered by label, so the positives of a chunk of queries
are one contiguous range of candidates, usually inside one or two candidate chunks. Those chunks are
scored first to get each query's best positive score; then every candidate chunk is scored once more to
count the negatives at or above it (and, when asked, to keep a running top-K). A chunk's scores are
always computed from the same operands with the same shapes, so the best positive found in the first
sweep is bitwise the value the second sweep compares against: exact ties stay exact.
"""

from __future__ import annotations

import numpy as np
import torch


def best_positive_ranks(queries: torch.Tensor, candidates: torch.Tensor, query_labels: torch.Tensor,
                        candidate_labels: torch.Tensor, chunk_size: int = 4096, return_topk: int = 0
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """1-based rank of each query's best positive among the candidates, by dot product.

    Args:
        queries: (N, E) embeddings (unit vectors for cosine similarity); any float dtype, scored in fp32.
        candidates: (M, E) embeddings.
        query_labels: (N,) ints; candidate j is a positive of query i when the labels are equal.
        candidate_labels: (M,) ints. Every query needs at least one positive.
        chunk_size: rows of queries and of candidates scored at once; peak extra memory is about
            chunk_size^2 x 6 bytes (a (chunk, chunk) fp32 score buffer and two bool masks), 100 MB at 4096.
        return_topk: K > 0 also returns each query's K best candidates (capped at M).
    Returns:
        ranks (N,) int64 in [1, M - positives + 1], and (N, K) int64 candidate indices, best first, or None.
    """
    n, m = queries.shape[0], candidates.shape[0]
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} "
                         "must be (N, E) and (M, E)")
    if query_labels.shape != (n,) or candidate_labels.shape != (m,):
        raise ValueError(f"labels {tuple(query_labels.shape)}, {tuple(candidate_labels.shape)} do not match "
                         f"N={n}, M={m}")
    if n == 0 or m == 0:
        raise ValueError("retrieval needs at least one query and one candidate")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = queries.device
    q_order = torch.argsort(query_labels.to(device), stable=True)  # (N,) sorted position -> query index
    c_order = torch.argsort(candidate_labels.to(device), stable=True)  # (M,)
    q_lab, c_lab = query_labels.to(device)[q_order], candidate_labels.to(device)[c_order]
    # positives of sorted query i = sorted candidates [lo[i], hi[i])
    lo = torch.searchsorted(c_lab, q_lab, right=False)  # (N,)
    hi = torch.searchsorted(c_lab, q_lab, right=True)  # (N,)
    if bool((hi == lo).any()):
        raise ValueError(f"{int((hi == lo).sum())} of {n} queries have no positive candidate")
    k_top = min(return_topk, m)
    ranks = torch.empty(n, dtype=torch.long, device=device)
    topk = torch.empty(n, k_top, dtype=torch.long, device=device) if k_top else None

    # one (Bq, Bc) fp32 score buffer and one bool buffer for the whole call: fresh 64 MB tensors per
    # chunk would each be mmap'd and page-faulted anew (several times slower in the benchmark)
    area = min(chunk_size, n) * min(chunk_size, m)
    score_buf = torch.empty(area, device=device)
    mask_buf = torch.empty(area, dtype=torch.bool, device=device)

    def scores(q: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Bq, Bc) fp32 scores (in ``score_buf``) of query rows ``q`` against sorted candidate chunk ``j``,
        its labels (Bc,) and its original candidate indices (Bc,)."""
        idx = c_order[j * chunk_size:(j + 1) * chunk_size]
        out = score_buf[:len(q) * len(idx)].view(len(q), len(idx))
        torch.matmul(q, candidates[idx].float().t(), out=out)
        return out, c_lab[j * chunk_size:(j + 1) * chunk_size], idx

    def mask(s: torch.Tensor) -> torch.Tensor:
        return mask_buf[:s.numel()].view(s.shape)  # (Bq, Bc) bool, overwritten by the next call

    n_chunks = -(-m // chunk_size)
    for start in range(0, n, chunk_size):
        rows = q_order[start:start + chunk_size]  # (Bq,) query indices
        q = queries[rows].float()  # (Bq, E)
        ql = q_lab[start:start + chunk_size, None]  # (Bq, 1)
        # chunks holding this query chunk's positives (sorted order makes them one range)
        first, last = int(lo[start]) // chunk_size, (int(hi[start + len(rows) - 1]) - 1) // chunk_size
        best = torch.full((len(rows),), float("-inf"), device=device)  # (Bq,) best positive score
        for j in range(first, last + 1):
            s, cl, _ = scores(q, j)
            negative = torch.ne(ql, cl[None, :], out=mask(s))
            best = torch.maximum(best, s.masked_fill_(negative, float("-inf")).amax(1))
        above = torch.zeros(len(rows), dtype=torch.long, device=device)  # (Bq,) negatives >= best
        top_v = top_i = None  # running (Bq, K) best scores and their candidate indices
        for j in range(n_chunks):
            s, cl, idx = scores(q, j)
            if k_top:
                v, i = s.topk(min(k_top, s.shape[1]), dim=1)  # merge chunk top-K with the running one
                i = idx[i]
                if top_v is not None:
                    v, pick = torch.cat([top_v, v], 1).topk(min(k_top, top_v.shape[1] + v.shape[1]), dim=1)
                    i = torch.cat([top_i, i], 1).gather(1, pick)
                top_v, top_i = v, i
            ge = torch.ge(s, best[:, None], out=mask(s))  # (Bq, Bc)
            if first <= j <= last:  # only these chunks hold positives: don't count them as negatives
                ge &= ql != cl[None, :]
            # count in the score buffer as 0 / 1 floats (exact up to 2^24): summing the bool mask would
            # first convert all of it to an int64 copy, 8 bytes per score
            above += s.copy_(ge).sum(1).long()
        ranks[rows] = above + 1
        if k_top:
            topk[rows] = top_i
    return ranks, topk


def chance_recall(m: int, positives: torch.Tensor, k: int) -> float:
    """Expected R@k of a uniformly random ranking of ``m`` candidates: the mean over queries of
    1 - C(m - p, k) / C(m, k), the chance that k random candidates include one of the query's p positives.

    Args:
        m: number of candidates.
        positives: (N,) positives per query.
        k: cut-off (capped at m).
    """
    p = positives.double().cpu()
    if k <= 1:  # p / m directly: 1 - (m - p) / m would round 0.1 to 0.09999999999999998
        return float(p.mean()) / m
    j = torch.arange(min(k, m), dtype=torch.float64)  # C(m-p, k)/C(m, k) = prod_j (m-p-j)/(m-j)
    miss = ((m - p[:, None] - j).clamp(min=0) / (m - j)).prod(1)  # (N,)
    return float((1 - miss).mean())


def positives_per_query(query_labels: torch.Tensor, candidate_labels: torch.Tensor) -> torch.Tensor:
    """(N,) int64: how many candidates share each query's label, without an N x M comparison.

    Args:
        query_labels: (N,) ints.
        candidate_labels: (M,) ints.
    """
    c_sorted = torch.sort(candidate_labels.cpu()).values
    q = query_labels.cpu()
    return torch.searchsorted(c_sorted, q, right=True) - torch.searchsorted(c_sorted, q, right=False)


def retrieval_scores(queries: torch.Tensor, candidates: torch.Tensor, query_labels: torch.Tensor | None = None,
                     candidate_labels: torch.Tensor | None = None, ks=(1, 5, 10), chunk_size: int = 4096,
                     return_topk: int = 0) -> dict:
    """Retrieval of candidates for each query (one direction: call again with the roles swapped).

    Args:
        queries: (N, E) unit vectors.
        candidates: (M, E) unit vectors.
        query_labels: (N,) ints; None with candidate_labels None: paired rows, query i <-> candidate i (N == M).
        candidate_labels: (M,) ints; candidate j is a positive of query i when the labels are equal.
        ks: cut-offs of R@k.
        chunk_size: rows scored at once (see ``best_positive_ranks``).
        return_topk: K > 0 adds "topk", each query's K best candidate indices (for report examples).
    Returns:
        ``r@k`` (fraction of queries with a positive in the top k, ties against the query), ``chance@k``
        (expected R@k of a random ranking, from the positives per query), ``mean_rank`` and ``median_rank``
        (1-based rank of the best positive; the median of an even count averages the middle two),
        ``n_queries``, ``n_candidates``, ``mean_positives`` (floats); ``ranks`` (N,) int64 and, when asked,
        ``topk`` (N, K) int64 tensors.
    """
    if (query_labels is None) != (candidate_labels is None):
        raise ValueError("give both label tensors or neither")
    if query_labels is None:
        if queries.shape[0] != candidates.shape[0]:
            raise ValueError(f"paired retrieval needs N == M, got {queries.shape[0]} and {candidates.shape[0]}")
        query_labels = candidate_labels = torch.arange(queries.shape[0])
    ranks, topk = best_positive_ranks(queries, candidates, query_labels, candidate_labels, chunk_size, return_topk)
    m = candidates.shape[0]
    positives = positives_per_query(query_labels, candidate_labels)
    r = ranks.cpu()
    out: dict = {}
    for k in ks:
        out[f"r@{k}"] = int((r <= k).sum()) / len(r)
        out[f"chance@{k}"] = chance_recall(m, positives, k)
    out.update(mean_rank=float(r.double().mean()), median_rank=float(np.median(r.numpy())),
               n_queries=float(len(r)), n_candidates=float(m), mean_positives=float(positives.double().mean()),
               ranks=r)
    if topk is not None:
        out["topk"] = topk.cpu()
    return out
