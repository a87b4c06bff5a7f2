"""Chunked retrieval ranks against a plain full-matrix computation and against ranks worked out by hand."""

from math import comb

import numpy as np
import pytest
import torch

from tasks.metrics import recall_at_k
from tasks.retrieval import (best_positive_ranks, chance_mean_rank, chance_recall, pair_retrieval_scores,
                             retrieval_scores)


def full_matrix_ranks(q, c, ql, cl):
    """The straightforward reference: the whole (N, M) matrix, rank = 1 + negatives >= best positive."""
    sim = q @ c.t()  # (N, M)
    pos = ql[:, None] == cl[None, :]
    best = sim.masked_fill(~pos, float("-inf")).max(1).values[:, None]
    return ((sim >= best) & ~pos).sum(1) + 1


def integer_embeddings(n, m, seed):
    # small integers: every dot product is exact in fp32 whatever the summation order, and ties are
    # frequent, so chunked and full-matrix ranks must agree exactly, tie rule included
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (n, 4), generator=g).float()
    c = torch.randint(-2, 3, (m, 4), generator=g).float()
    return q, c, g


@pytest.mark.parametrize("chunk", [1, 5, 7, 16, 1000])
def test_chunked_ranks_equal_the_full_matrix(chunk):
    q, c, g = integer_embeddings(37, 53, seed=chunk)
    # 6 labels over 53 candidates: several positives per query (duplicate captions), in shuffled order
    cl = torch.randint(0, 6, (53,), generator=g)
    cl[:6] = torch.arange(6)  # every label has a candidate
    ql = torch.randint(0, 6, (37,), generator=g)
    ranks, top = best_positive_ranks(q, c, ql, cl, chunk_size=chunk, return_topk=9)
    expected = full_matrix_ranks(q, c, ql, cl)
    assert torch.equal(ranks, expected)
    assert len(set(expected.tolist())) > 3  # the case is not degenerate
    # top-9: the scores of the returned candidates are the 9 best scores, best first, all distinct indices
    sim = q @ c.t()
    assert torch.equal(sim.gather(1, top), sim.topk(9, dim=1).values)
    assert all(len(set(row)) == 9 for row in top.tolist())
    out = retrieval_scores(q, c, ql, cl, ks=(1, 5, 10), chunk_size=chunk)
    for k in (1, 5, 10):
        assert out[f"r@{k}"] == pytest.approx(float((expected <= k).double().mean()))
    assert out["mean_rank"] == pytest.approx(float(expected.double().mean()))


def test_ranks_by_hand():
    q = torch.tensor([[1.0, 0], [0, 1], [1, 1], [-1, 0]])
    c = torch.tensor([[2.0, 0], [1, 1], [0, 2], [1, 0]])
    ql, cl = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 2])
    # q0: positive c0 scores 2, nothing higher -> 1
    # q1: positive c1 scores 1, c2 scores 2 -> 2
    # q2: best positive c2 scores 2, negatives c0, c1 tie at 2 and count against it -> 3
    # q3: positive c0 scores -2, every other candidate is at least as high -> 4
    out = retrieval_scores(q, c, ql, cl, ks=(1, 2, 3), chunk_size=3, return_topk=2)
    assert out["ranks"].tolist() == [1, 2, 3, 4]
    assert (out["r@1"], out["r@2"], out["r@3"]) == (0.25, 0.5, 0.75)
    assert out["mean_rank"] == 2.5 and out["median_rank"] == 2.5
    assert out["n_queries"] == 4 and out["n_candidates"] == 4 and out["mean_positives"] == 1.25
    # chance: positives per query 1, 1, 2, 1 of 4 candidates
    assert out["chance@1"] == pytest.approx((1 + 1 + 2 + 1) / 4 / 4)
    # R@2 of a random ranking: 1 - C(4 - p, 2) / C(4, 2) -> p=1: 1 - 3/6, p=2: 1 - 1/6
    assert out["chance@2"] == pytest.approx((3 * (1 - 3 / 6) + (1 - 1 / 6)) / 4)
    assert out["topk"][0].tolist() == [0, 1] or out["topk"][0].tolist() == [0, 3]  # c1 and c3 tie at 1
    assert out["topk"][1].tolist() == [2, 1]


def test_chance_formula_against_combinations():
    p = torch.tensor([1, 3, 7])
    for k in (1, 2, 5, 20):
        expected = sum(1 - comb(20 - int(x), k) / comb(20, k) for x in p) / 3
        assert chance_recall(20, p, k) == pytest.approx(expected)
    assert chance_recall(20, p, 50) == 1.0  # k beyond M: every candidate is in the top k


def test_paired_rows_and_n_not_equal_m():
    e = torch.nn.functional.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = retrieval_scores(e, e, chunk_size=7)
    assert out["r@1"] == 1.0 and out["mean_rank"] == 1.0 and out["chance@1"] == pytest.approx(1 / 30)
    # 10 images, 3 captions each (caption j describes image j // 3): text -> image and image -> text
    img = e[:10]
    txt = img.repeat_interleave(3, 0) + 0.01 * e[:30].roll(1, 1)
    img_of_txt = torch.arange(30) // 3
    t2i = retrieval_scores(txt, img, img_of_txt, torch.arange(10), ks=(1,), chunk_size=4)
    i2t = retrieval_scores(img, txt, torch.arange(10), img_of_txt, ks=(1,), chunk_size=4)
    assert t2i["r@1"] == 1.0 and t2i["n_queries"] == 30 and t2i["n_candidates"] == 10
    assert i2t["r@1"] == 1.0 and i2t["mean_positives"] == 3 and i2t["chance@1"] == pytest.approx(3 / 30)
    with pytest.raises(ValueError, match="N == M"):
        retrieval_scores(img, txt)


def test_a_query_without_positive_is_an_error():
    with pytest.raises(ValueError, match="no positive"):
        retrieval_scores(torch.eye(2), torch.eye(2), torch.tensor([0, 5]), torch.tensor([0, 1]))


def test_recall_at_k_keeps_the_full_matrix_values():
    q, c, g = integer_embeddings(25, 25, seed=3)
    labels = torch.randint(0, 8, (25,), generator=g)
    ranks = full_matrix_ranks(q, c, labels, labels)
    for lab, r in ((labels, ranks), (None, full_matrix_ranks(q, c, torch.arange(25), torch.arange(25)))):
        got = recall_at_k(q, c, (1, 3, 5), lab, chunk_size=6)
        assert got == {k: float((r <= k).double().mean()) for k in (1, 3, 5)}


# -- general (bipartite) positives: pair_retrieval_scores -------------------------------------------------
def transpose(positives, m):
    """The other direction's lists: candidate j's positives are the queries whose list holds j."""
    out = [[] for _ in range(m)]
    for i, p in enumerate(positives):
        for j in p:
            out[j].append(i)
    return out


def full_matrix_pair_ranks(q, c, positives):
    """The straightforward reference for index lists: a dense (N, M) positive mask and the whole matrix."""
    pos = torch.zeros(q.shape[0], c.shape[0], dtype=torch.bool)
    for i, p in enumerate(positives):
        pos[i, p] = True
    sim = q @ c.t()
    best = sim.masked_fill(~pos, float("-inf")).max(1).values[:, None]
    return ((sim >= best) & ~pos).sum(1) + 1, pos.sum(1)


def test_cat_and_kitty_by_hand():
    # images A, B; texts "cat" (of A and of B) and "kitty" (of A only): A and B stay two items
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # A, B
    txt = torch.tensor([[0.0, 1.0], [0.6, 0.8]])  # "cat", "kitty"
    t2i_pos = [[0, 1], [0]]  # cat -> {A, B}, kitty -> {A}
    t2i = pair_retrieval_scores(txt, img, t2i_pos, ks=(1,), chunk_size=1, return_topk=2)
    # cat: best positive B scores 1, nothing else is a negative -> 1
    # kitty: positive A scores 0.6, negative B scores 0.8 -> 2
    assert t2i["ranks"].tolist() == [1, 2] and t2i["r@1"] == 0.5
    assert t2i["mean_positives"] == 1.5 and t2i["n_queries"] == 2 and t2i["n_candidates"] == 2
    assert t2i["chance@1"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert t2i["mean_rank_chance"] == pytest.approx((3 / 3 + 3 / 2) / 2)
    assert t2i["topk"].tolist() == [[1, 0], [1, 0]]
    i2t_pos = transpose(t2i_pos, 2)
    assert i2t_pos == [[0, 1], [0]]  # A -> {cat, kitty}, B -> {cat}
    i2t = pair_retrieval_scores(img, txt, i2t_pos, ks=(1,), chunk_size=1)
    # A: positives cat 0, kitty 0.6 -> best 0.6, no negative -> 1
    # B: positive cat 1, negative kitty 0.8 -> 1
    assert i2t["ranks"].tolist() == [1, 1] and i2t["r@1"] == 1.0
    # make kitty score above cat for B: B's rank drops to 2 (with labels, A and B would be merged instead)
    i2t = pair_retrieval_scores(img, torch.tensor([[0.0, 0.5], [0.6, 0.8]]), i2t_pos, ks=(1,), chunk_size=1)
    assert i2t["ranks"].tolist() == [1, 2]


@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_pairs_agree_with_labels(chunk):
    q, c, g = integer_embeddings(37, 53, seed=10 + chunk)
    cl = torch.randint(0, 6, (53,), generator=g)
    cl[:6] = torch.arange(6)
    ql = torch.randint(0, 6, (37,), generator=g)
    positives = [torch.nonzero(cl == lab).flatten().tolist() for lab in ql.tolist()]
    by_labels = retrieval_scores(q, c, ql, cl, ks=(1, 5, 10), chunk_size=chunk, return_topk=9)
    by_pairs = pair_retrieval_scores(q, c, positives, ks=(1, 5, 10), chunk_size=chunk, return_topk=9)
    assert by_pairs.keys() == by_labels.keys()
    assert torch.equal(by_pairs["ranks"], by_labels["ranks"])
    sim = q @ c.t()  # tied candidates may come in another order: compare the scores of the top-K
    assert torch.equal(sim.gather(1, by_pairs["topk"]), sim.gather(1, by_labels["topk"]))
    for key in by_labels.keys() - {"ranks", "topk"}:
        assert by_pairs[key] == pytest.approx(by_labels[key]), key


@pytest.mark.parametrize("chunk", [1, 5, 7, 16, 1000])
def test_pairs_equal_the_full_matrix(chunk):
    q, c, g = integer_embeddings(37, 53, seed=20 + chunk)
    # 1 to 5 random positives per query, some repeated; 37 and 53 are prime, so no chunk size divides them
    positives = [torch.randint(0, 53, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(37)]
    expected, n_pos = full_matrix_pair_ranks(q, c, positives)
    out = pair_retrieval_scores(q, c, positives, ks=(1, 5, 10), chunk_size=chunk, return_topk=9)
    assert torch.equal(out["ranks"], expected)
    assert len(set(expected.tolist())) > 3
    assert bool((expected <= 53 - n_pos + 1).all())
    for k in (1, 5, 10):
        assert out[f"r@{k}"] == pytest.approx(float((expected <= k).double().mean()))
        assert out[f"chance@{k}"] == pytest.approx(chance_recall(53, n_pos, k))
    assert out["mean_rank"] == pytest.approx(float(expected.double().mean()))
    assert out["median_rank"] == float(np.median(expected.numpy()))
    assert out["mean_positives"] == pytest.approx(float(n_pos.double().mean()))  # repeats counted once
    assert out["mean_rank_chance"] == pytest.approx(float((54 / (n_pos.double() + 1)).mean()))
    sim = q @ c.t()
    assert torch.equal(sim.gather(1, out["topk"]), sim.topk(9, dim=1).values)
    # the other direction (candidates with no positive query left out)
    back = transpose(positives, 53)
    keep = [j for j in range(53) if back[j]]
    exp_back, _ = full_matrix_pair_ranks(c[keep], q, [back[j] for j in keep])
    got = pair_retrieval_scores(c[keep], q, [back[j] for j in keep], chunk_size=chunk)
    assert torch.equal(got["ranks"], exp_back)


def test_pair_ties_count_against_the_query():
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # q0: positive c0 scores 1, negative c1 ties at 1, c2 ties at 1 -> 3
    # q1: positives c0 (1) and c3 (1); negative c2 scores 2, c1 ties at 1 -> 3
    out = pair_retrieval_scores(q, c, [[0], [0, 3]], ks=(1, 3), chunk_size=3)
    assert out["ranks"].tolist() == [3, 3] and out["r@1"] == 0.0 and out["r@3"] == 1.0
    # a positive equal to the best positive is not a negative
    assert pair_retrieval_scores(q, c, [[0, 1, 2], [2]], ks=(1,), chunk_size=2)["ranks"].tolist() == [1, 1]


def test_mean_rank_chance_by_hand():
    # 4 candidates; positives 1, 1, 2, 1 (test_ranks_by_hand's labels): (M + 1) / (p + 1) = 5/2, 5/2, 5/3, 5/2
    q = torch.tensor([[1.0, 0], [0, 1], [1, 1], [-1, 0]])
    c = torch.tensor([[2.0, 0], [1, 1], [0, 2], [1, 0]])
    out = retrieval_scores(q, c, torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 2]), chunk_size=3)
    assert out["mean_rank_chance"] == pytest.approx((3 * 5 / 2 + 5 / 3) / 4)
    pairs = pair_retrieval_scores(q, c, [[0], [1], [2, 3], [0]], chunk_size=3)
    assert pairs["mean_rank_chance"] == out["mean_rank_chance"] and pairs["ranks"].tolist() == [1, 2, 3, 4]
    # one positive among M: (M + 1) / 2, the middle of 1..M; every candidate a positive: rank 1
    assert chance_mean_rank(9, torch.tensor([1])) == 5.0 and chance_mean_rank(9, torch.tensor([9])) == 1.0


def test_pair_positives_are_checked():
    e = torch.eye(3)
    with pytest.raises(ValueError, match="no positive"):
        pair_retrieval_scores(e, e, [[0], [], [2]])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        pair_retrieval_scores(e, e, [[0], [3], [2]])
    with pytest.raises(ValueError, match="positive lists"):
        pair_retrieval_scores(e, e, [[0], [1]])


def test_chance_median_rank_by_hand():
    from tasks.retrieval import chance_median_rank

    # one positive among 9: the rank is uniform on 1..9, median 5
    assert chance_median_rank(9, torch.tensor([1])) == 5.0
    # two positives among 4: P(best rank 1) = 1/2 -> median 1; one among 4: P(rank <= 2) = 1/2 -> median 2
    assert chance_median_rank(4, torch.tensor([2])) == 1.0
    assert chance_median_rank(4, torch.tensor([1])) == 2.0
    # the median over queries of their medians: 5, 5, 1 (9 candidates: 1, 1, 9 positives)
    assert chance_median_rank(9, torch.tensor([1, 1, 9])) == 5.0
