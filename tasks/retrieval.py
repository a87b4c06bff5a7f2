"""Exact cross-modal retrieval ranks, computed in chunks: memory is bounded by the chunk size, never N x M.

Two ways to say which candidates are the positives of a query:
  labels     (``retrieval_scores``, ``best_positive_ranks``) a candidate is a positive of a query when their
             labels are equal (CLIP_benchmark's semantics: an image with five captions has five positive
             texts, and a hit is ANY of them in the top k). Labels make the relation an equivalence.
  pairs      (``pair_retrieval_scores``) an explicit list of positive candidates per query, for a relation
             labels cannot express: image A has the captions "cat" and "kitty", image B only "cat"; text
             "cat" has the positives {A, B}, "kitty" only {A}, yet A and B are two items, not one.
The rank of a query is 1 + the number of negatives scoring at least as high as its best positive, so ties
count against the query (a negative equal to the positive is not a hit at k = 1).

How the chunks go (``_chunked_ranks``, shared by both): the candidate chunks holding a query chunk's
positives are scored first to get each query's best positive score (its dense (chunk, chunk) negative mask
is built from the labels or from the index lists); then every candidate chunk is scored once more to count
the negatives at or above it (and, when asked, to keep a running top-K). With labels, queries and
candidates are ordered by label, so the positives of a query chunk are one contiguous range of candidates,
usually inside one or two candidate chunks. A chunk's scores are always computed from the same operands
with the same shapes, so the best positive found in the first sweep is bitwise the value the second sweep
compares against: exact ties stay exact.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

# candidate chunk number -> a function filling a (Bq, Bc) bool buffer with the chunk's negative mask
# (True where the candidate is NOT a positive of the query) and returning it
NegativeBlocks = dict[int, Callable[[torch.Tensor], torch.Tensor]]


def _check_embeddings(queries: torch.Tensor, candidates: torch.Tensor, chunk_size: int) -> tuple[int, int]:
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} "
                         "must be (N, E) and (M, E)")
    n, m = queries.shape[0], candidates.shape[0]
    if n == 0 or m == 0:
        raise ValueError("retrieval needs at least one query and one candidate")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return n, m


def _chunked_ranks(queries: torch.Tensor, candidates: torch.Tensor, q_order: torch.Tensor, c_order: torch.Tensor,
                   chunk_size: int, return_topk: int, negative_blocks: Callable[[int, int], NegativeBlocks]
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The two sweeps behind both kinds of positives.

    Args:
        queries, candidates: (N, E), (M, E).
        q_order: (N,) query indices in the order they are chunked.
        c_order: (M,) candidate indices in the order they are chunked: candidate chunk j is
            ``c_order[j * chunk_size:(j + 1) * chunk_size]``.
        chunk_size, return_topk: as in ``best_positive_ranks``.
        negative_blocks: (start, stop) -> the negative masks of the candidate chunks holding positives of
            the queries ``q_order[start:stop]``; every other chunk holds negatives only.
    Returns:
        ranks (N,) int64 and top-K (N, K) int64 candidate indices or None.
    """
    n, m = queries.shape[0], candidates.shape[0]
    device = queries.device
    k_top = min(return_topk, m)
    ranks = torch.empty(n, dtype=torch.long, device=device)
    topk = torch.empty(n, k_top, dtype=torch.long, device=device) if k_top else None

    # one (Bq, Bc) fp32 score buffer and two bool buffers for the whole call: fresh 64 MB tensors per
    # chunk would each be mmap'd and page-faulted anew (several times slower in the benchmark)
    area = min(chunk_size, n) * min(chunk_size, m)
    score_buf = torch.empty(area, device=device)
    mask_bufs = torch.empty(2, area, dtype=torch.bool, device=device)

    def scores(q: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Bq, Bc) fp32 scores (in ``score_buf``) of query rows ``q`` against candidate chunk ``j``, and
        the chunk's original candidate indices (Bc,)."""
        idx = c_order[j * chunk_size:(j + 1) * chunk_size]
        out = score_buf[:len(q) * len(idx)].view(len(q), len(idx))
        torch.matmul(q, candidates[idx].float().t(), out=out)
        return out, idx

    def mask(s: torch.Tensor, which: int = 0) -> torch.Tensor:
        return mask_bufs[which, :s.numel()].view(s.shape)  # (Bq, Bc) bool, overwritten by the next call

    n_chunks = -(-m // chunk_size)
    for start in range(0, n, chunk_size):
        rows = q_order[start:start + chunk_size]  # (Bq,) query indices
        q = queries[rows].float()  # (Bq, E)
        blocks = negative_blocks(start, start + len(rows))
        best = torch.full((len(rows),), float("-inf"), device=device)  # (Bq,) best positive score
        for j, negatives in blocks.items():
            s, _ = scores(q, j)
            best = torch.maximum(best, s.masked_fill_(negatives(mask(s)), float("-inf")).amax(1))
        above = torch.zeros(len(rows), dtype=torch.long, device=device)  # (Bq,) negatives >= best
        top_v = top_i = None  # running (Bq, K) best scores and their candidate indices
        for j in range(n_chunks):
            s, idx = scores(q, j)
            if k_top:
                v, i = s.topk(min(k_top, s.shape[1]), dim=1)  # merge chunk top-K with the running one
                i = idx[i]
                if top_v is not None:
                    v, pick = torch.cat([top_v, v], 1).topk(min(k_top, top_v.shape[1] + v.shape[1]), dim=1)
                    i = torch.cat([top_i, i], 1).gather(1, pick)
                top_v, top_i = v, i
            ge = torch.ge(s, best[:, None], out=mask(s))  # (Bq, Bc)
            if j in blocks:  # only these chunks hold positives: don't count them as negatives
                ge &= blocks[j](mask(s, 1))
            # count in the score buffer as 0 / 1 floats (exact up to 2^24): summing the bool mask would
            # first convert all of it to an int64 copy, 8 bytes per score
            above += s.copy_(ge).sum(1).long()
        ranks[rows] = above + 1
        if k_top:
            topk[rows] = top_i
    return ranks, topk


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
    n, m = _check_embeddings(queries, candidates, chunk_size)
    if query_labels.shape != (n,) or candidate_labels.shape != (m,):
        raise ValueError(f"labels {tuple(query_labels.shape)}, {tuple(candidate_labels.shape)} do not match "
                         f"N={n}, M={m}")
    device = queries.device
    q_order = torch.argsort(query_labels.to(device), stable=True)  # (N,) sorted position -> query index
    c_order = torch.argsort(candidate_labels.to(device), stable=True)  # (M,)
    q_lab, c_lab = query_labels.to(device)[q_order], candidate_labels.to(device)[c_order]
    # positives of sorted query i = sorted candidates [lo[i], hi[i])
    lo = torch.searchsorted(c_lab, q_lab, right=False)  # (N,)
    hi = torch.searchsorted(c_lab, q_lab, right=True)  # (N,)
    if bool((hi == lo).any()):
        raise ValueError(f"{int((hi == lo).sum())} of {n} queries have no positive candidate")

    def negative_blocks(start: int, stop: int) -> NegativeBlocks:
        ql = q_lab[start:stop, None]  # (Bq, 1)
        # chunks holding this query chunk's positives (sorted order makes them one range)
        first, last = int(lo[start]) // chunk_size, (int(hi[stop - 1]) - 1) // chunk_size
        return {j: (lambda out, cl=c_lab[j * chunk_size:(j + 1) * chunk_size]: torch.ne(ql, cl[None, :], out=out))
                for j in range(first, last + 1)}

    return _chunked_ranks(queries, candidates, q_order, c_order, chunk_size, return_topk, negative_blocks)


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


def chance_mean_rank(m: int, positives: torch.Tensor) -> float:
    """Expected mean rank of a uniformly random ranking of ``m`` candidates: the mean over queries of
    (m + 1) / (p + 1), the expected position of the first of p positives placed at random among m.

    Args:
        m: number of candidates.
        positives: (N,) positives per query.
    """
    return float(((m + 1) / (positives.double().cpu() + 1)).mean())


def chance_median_rank(m: int, positives: torch.Tensor) -> float:
    """Median rank of a uniformly random ranking of ``m`` candidates: the median over queries of each query's
    median best-positive rank, the smallest r with P(rank <= r) = 1 - C(m - r, p) / C(m, p) >= 1/2.

    Args:
        m: number of candidates.
        positives: (N,) positives per query.
    """
    from math import comb

    medians = {}
    for p in sorted(set(int(x) for x in positives.cpu().tolist())):
        # P(rank > r) = C(m - r, p) / C(m, p) falls as r grows: bisect on exact integers (floats misjudge 1/2)
        lo, hi, total = 1, max(1, m - p + 1), comb(m, p)
        while lo < hi:
            r = (lo + hi) // 2
            if 2 * comb(m - r, p) <= total:
                hi = r
            else:
                lo = r + 1
        medians[p] = lo
    return float(np.median([medians[int(x)] for x in positives.cpu().tolist()]))


def positives_per_query(query_labels: torch.Tensor, candidate_labels: torch.Tensor) -> torch.Tensor:
    """(N,) int64: how many candidates share each query's label, without an N x M comparison.

    Args:
        query_labels: (N,) ints.
        candidate_labels: (M,) ints.
    """
    c_sorted = torch.sort(candidate_labels.cpu()).values
    q = query_labels.cpu()
    return torch.searchsorted(c_sorted, q, right=True) - torch.searchsorted(c_sorted, q, right=False)


def _summary(ranks: torch.Tensor, topk: torch.Tensor | None, m: int, positives: torch.Tensor, ks) -> dict:
    """The result dict of ``retrieval_scores`` from the ranks and the positives per query."""
    r = ranks.cpu()
    out: dict = {}
    for k in ks:
        out[f"r@{k}"] = int((r <= k).sum()) / len(r)
        out[f"chance@{k}"] = chance_recall(m, positives, k)
    out.update(mean_rank=float(r.double().mean()), median_rank=float(np.median(r.numpy())),
               mean_rank_chance=chance_mean_rank(m, positives), median_rank_chance=chance_median_rank(m, positives),
               n_queries=float(len(r)), n_candidates=float(m), mean_positives=float(positives.double().mean()), ranks=r)
    if topk is not None:
        out["topk"] = topk.cpu()
    return out


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
        ``mean_rank_chance`` (a random ranking's expected mean rank, the mean of (M + 1) / (p + 1)),
        ``median_rank_chance`` (``chance_median_rank``),
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
    positives = positives_per_query(query_labels, candidate_labels)
    return _summary(ranks, topk, candidates.shape[0], positives, ks)


def pair_retrieval_scores(queries: torch.Tensor, candidates: torch.Tensor, positives: list[list[int]],
                          ks=(1, 5, 10), chunk_size: int = 4096, return_topk: int = 0) -> dict:
    """``retrieval_scores`` for a general (bipartite) positive relation given as index lists.

    Args:
        queries: (N, E) unit vectors.
        candidates: (M, E) unit vectors.
        positives: N lists; ``positives[i]`` are the candidate indices (in [0, M)) that are positives of
            query i. Every query needs at least one; a repeated index counts once. For the other direction,
            pass the transposed lists (candidate j's positives = the queries whose list holds j).
        ks, chunk_size, return_topk: as in ``retrieval_scores``; memory is that of ``best_positive_ranks``
            plus the index lists (O(total positives), never N x M).
    Returns:
        the keys of ``retrieval_scores``, with the positives of ``positives``.
    """
    n, m = _check_embeddings(queries, candidates, chunk_size)
    if len(positives) != n:
        raise ValueError(f"{len(positives)} positive lists for N={n} queries")
    counts = torch.tensor([len(p) for p in positives], dtype=torch.long)
    if bool((counts == 0).any()):
        raise ValueError(f"{int((counts == 0).sum())} of {n} queries have no positive candidate")
    flat_c = torch.tensor([j for p in positives for j in p], dtype=torch.long)  # (P,)
    if bool(((flat_c < 0) | (flat_c >= m)).any()):
        raise ValueError(f"positive candidate indices must be in [0, {m})")
    # (query, candidate) pairs, deduplicated and sorted by query then candidate, as one int64 key
    key = torch.unique(torch.repeat_interleave(torch.arange(n), counts) * m + flat_c)
    pos_q, pos_c = key // m, key % m
    per_query = torch.bincount(pos_q, minlength=n)  # (N,) distinct positives
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), per_query.cumsum(0)]).tolist()  # query i: [o_i, o_i+1)
    device = queries.device
    pos_q, pos_c = pos_q.to(device), pos_c.to(device)
    false = torch.zeros((), dtype=torch.bool, device=device)

    def negative_blocks(start: int, stop: int) -> NegativeBlocks:
        r, c = pos_q[offsets[start]:offsets[stop]] - start, pos_c[offsets[start]:offsets[stop]]
        chunk = c // chunk_size  # candidates are chunked in index order
        order = torch.argsort(chunk, stable=True)
        r, c, chunk = r[order], c[order], chunk[order]
        js, sizes = torch.unique_consecutive(chunk, return_counts=True)
        sizes = sizes.tolist()
        return {j: (lambda out, rr=rr, cc=cc - j * chunk_size: out.fill_(True).index_put_((rr, cc), false))
                for j, rr, cc in zip(js.tolist(), r.split(sizes), c.split(sizes))}

    ranks, topk = _chunked_ranks(queries, candidates, torch.arange(n, device=device), torch.arange(m, device=device),
                                 chunk_size, return_topk, negative_blocks)
    return _summary(ranks, topk, m, per_query, ks)
