"""The embedding suites: retrieval, zero-shot classification, linear probe (CLIP_benchmark's tasks).

Each computes unit embeddings on Ray Data actors (``workers.embeddings``) and its figures from them with the
metric functions of ``tasks`` (chunked retrieval ranks, open_clip's zero-shot classifier, scikit-learn's
logistic regression); every figure beside a baseline on the same data (chance, the majority class).
"""

from __future__ import annotations

import numpy as np

from pipelines.evaluation import data as rows_of
from pipelines.evaluation.workers import MEDIA_COLUMNS, embeddings

DEFAULT_PAIRS = (("image", "text"), ("audio", "text"), ("image", "audio"))


def _embed(run, rows: list[dict], modalities, split: str | None = None):
    """(vectors, digests) of ``rows`` of the suite's data (see ``workers.embeddings``)."""
    m = run.data
    cols = ["modalities"] + [c for mod in modalities for c in MEDIA_COLUMNS[mod]]
    ds = rows_of.read_rows(m, split or run.suite.split, [r["sample_id"] for r in rows], cols)
    return embeddings(ds, run.model_source(), resolution=int(m.extra.get("image_resolution", 224)),
                      ids=m.extra["tokenizers"]["text"]["ids"], modalities=list(modalities), **run.actor_options())


def _thumbs(run, ids: list[str], split: str | None = None) -> dict[str, bytes | None]:
    m = run.data
    media = rows_of.media_of(m, split or run.suite.split, ids, ["pixels"])
    R = int(m.extra.get("image_resolution", 224))
    return {sid: rows_of.thumbnail_png(media.get(sid, {}).get("pixels"), R) for sid in ids}


# -- retrieval ---------------------------------------------------------------------------------------------
def pair_items(rows: list[dict], a: str, b: str, key) -> tuple[list[int], list[int], list[list[int]]]:
    """The items of each side of an (a, b) retrieval and which pairs are positives.

    Rows are (a, b) pairs; ``key(row, m)`` is the content of the row's modality ``m`` (a caption's ids, a
    media digest). Equal content is one item (an image with five captions is one image query; a caption
    written under many images is one text candidate), and an a-item and a b-item are positives when some
    row pairs them; nothing else is merged (two images that share a caption stay two items).

    Returns:
        (row index of each a-item, row index of each b-item, per a-item the sorted b-items it pairs with).
    """
    index = {a: {}, b: {}}
    first = {a: [], b: []}
    pairs: dict[int, set[int]] = {}
    for i, r in enumerate(rows):
        ids = []
        for m in (a, b):
            k = key(r, m)
            if k not in index[m]:
                index[m][k] = len(first[m])
                first[m].append(i)
            ids.append(index[m][k])
        pairs.setdefault(ids[0], set()).add(ids[1])
    return first[a], first[b], [sorted(pairs[q]) for q in range(len(first[a]))]


def _transpose(positives: list[list[int]], m: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(m)]
    for q, cs in enumerate(positives):
        for c in cs:
            out[c].append(q)
    return out


def retrieval(run) -> dict:
    import torch

    from tasks.retrieval import pair_retrieval_scores

    s = run.suite
    meta = rows_of.read_meta(run.data, s.split)
    rows = [r for r in rows_of.choose(meta, sources=s.sources) if len(r["modalities"]) > 1]
    rows = rows[:s.limit] if s.limit else rows
    pairs = [tuple(p) for p in s.pairs] or [p for p in DEFAULT_PAIRS
                                            if sum(set(p) <= set(r["modalities"]) for r in rows) > 1]
    if not pairs:
        raise ValueError(f"{run.where}: no rows with two of text, image, audio in {run.data.stage!r} "
                         f"{s.split} (sources {s.sources or 'all'})")
    mods = sorted({m for p in pairs for m in p})
    vectors, digests = _embed(run, rows, mods)
    sp = run.text_tokenizer() if "text" in mods else None

    def key(r, m):
        return tuple(r["text_ids"] or ()) if m == "text" else digests[r["sample_id"]][m]

    metrics, baselines, examples, counts = {}, {}, [], {}
    k_top = max(5, max(s.ks))
    for a, b in pairs:
        pr = [r for r in rows if a in vectors.get(r["sample_id"], {}) and b in vectors.get(r["sample_id"], {})]
        first_a, first_b, pos = pair_items(pr, a, b, key)
        if len(first_a) < 2 or len(first_b) < 2:
            raise ValueError(f"{run.where}: fewer than two distinct {a} and {b} items to retrieve among")
        counts[f"{a}_{b}"] = {a: len(first_a), b: len(first_b), "pairs": len(pr)}
        emb = {m: torch.from_numpy(np.stack([vectors[pr[i]["sample_id"]][m] for i in first]))
               for m, first in ((a, first_a), (b, first_b))}
        items = {a: [pr[i] for i in first_a], b: [pr[i] for i in first_b]}
        for q, c, positives in ((a, b, pos), (b, a, _transpose(pos, len(first_b)))):
            out = pair_retrieval_scores(emb[q], emb[c], positives, ks=tuple(s.ks), return_topk=k_top)
            name = f"{q}_to_{c}"
            for k in s.ks:
                metrics[f"{name}/r@{k}"], baselines[f"{name}/r@{k}"] = out[f"r@{k}"], out[f"chance@{k}"]
            metrics[f"{name}/mean_rank"], metrics[f"{name}/median_rank"] = out["mean_rank"], out["median_rank"]
            baselines[f"{name}/mean_rank"] = out["mean_rank_chance"]
            baselines[f"{name}/median_rank"] = out["median_rank_chance"]
            examples += _examples(run, items[q], items[c], q, c, out["topk"], positives, sp,
                                  s.examples // (2 * len(pairs)) or 1)
        metrics[f"{a}_{b}/mean_r@1"] = (metrics[f"{a}_to_{b}/r@1"] + metrics[f"{b}_to_{a}/r@1"]) / 2
        baselines[f"{a}_{b}/mean_r@1"] = (baselines[f"{a}_to_{b}/r@1"] + baselines[f"{b}_to_{a}/r@1"]) / 2
    lower = [k for k in metrics if k.endswith("_rank")]
    headline = f"{pairs[0][0]}_{pairs[0][1]}/mean_r@1"
    return run.result(len(rows), metrics, baselines, "chance", headline, lower_is_better=lower,
                      details={"retrieval_examples": examples}, extra_data={"items": counts})


def _item(r: dict, m: str, sp, thumbs: dict) -> dict:
    if m == "text":
        return {"text": sp.decode([int(t) for t in r["text_ids"]]) if sp else str(r["text_ids"])}
    if m == "image":
        return {"image_png": thumbs.get(r["sample_id"])}
    return {"audio": r["sample_id"]}


def _examples(run, queries, candidates, q: str, c: str, topk, positives, sp, n: int) -> list[dict]:
    """The first ``n`` queries with their top 5 candidates, positives marked."""
    picks = list(range(min(n, len(queries))))
    need = {queries[i]["sample_id"] for i in picks} | {candidates[int(j)]["sample_id"]
                                                       for i in picks for j in topk[i, :5]}
    thumbs = _thumbs(run, sorted(need)) if "image" in (q, c) else {}
    out = []
    for i in picks:
        hits = [dict(_item(candidates[int(j)], c, sp, thumbs), positive=int(j) in positives[i]) for j in topk[i, :5]]
        out.append({"direction": f"{q}_to_{c}", "query": _item(queries[i], q, sp, thumbs), "hits": hits})
    return out


# -- zero-shot classification ------------------------------------------------------------------------------
def _class_names(run) -> list[str]:
    s = run.suite
    if s.classes:
        return list(s.classes)
    tables = run.data.extra.get("label_names") or {}
    named = [src for src in (s.sources or list(tables)) if src in tables]
    if len(named) != 1:
        raise ValueError(f"{run.where}: no class names: set `classes`, or `sources: [ONE]` of the corpus sources "
                         f"whose labels have names ({sorted(tables) or 'none recorded'})")
    return list(tables[named[0]])


def _labelled(run, split: str) -> list[dict]:
    s = run.suite
    rows = rows_of.choose(rows_of.read_meta(run.data, split), modalities=(s.modality,), sources=s.sources,
                          labelled=True, limit=s.limit if split == s.split else 0)
    if not rows:
        raise ValueError(f"{run.where}: no labelled {s.modality} rows in {run.data.stage!r} {split} "
                         f"(sources {s.sources or 'all'})")
    sources = sorted({rows_of.origin_source(r) for r in rows})
    if len(sources) > 1:  # each source numbers its own labels
        raise ValueError(f"{run.where}: labelled rows of several sources ({', '.join(sources)}) have label spaces of "
                         "their own: give `sources: [ONE]`")
    return rows


def zero_shot(run) -> dict:
    import ray
    import torch

    from pipelines.data.featurize import Featurizer
    from pipelines.stages.shards import ShardsConfig
    from tasks.zero_shot import build_zero_shot_classifier, classification_metrics, zero_shot_logits

    s = run.suite
    names = _class_names(run)
    rows = _labelled(run, s.split)
    bad = sorted({r["label"] for r in rows if not 0 <= r["label"] < len(names)})
    if bad:
        raise ValueError(f"{run.where}: labels {bad} have no class name ({len(names)} names)")
    prompts = sorted({t.format(c) for c in names for t in s.templates})
    feat = Featurizer(_spm_bytes(run), ShardsConfig(max_text_tokens=int(run.data.extra.get("max_text_tokens", 256))))
    items = [{"sample_id": p, "modalities": ["text"], "text_ids": ids} for p, ids in zip(prompts, feat.text_ids(prompts))]
    prompt_vectors, _ = embeddings(ray.data.from_items(items), run.model_source(),
                                   resolution=int(run.data.extra.get("image_resolution", 224)),
                                   ids=run.data.extra["tokenizers"]["text"]["ids"], modalities=["text"],
                                   **run.actor_options())

    def encode_text(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([prompt_vectors[t]["text"] for t in texts]))

    classifier = build_zero_shot_classifier(encode_text, names, s.templates)  # (E, C)
    vectors, _ = _embed(run, rows, [s.modality])
    feats = torch.from_numpy(np.stack([vectors[r["sample_id"]][s.modality] for r in rows]))  # (N, E)
    logits = zero_shot_logits(feats, classifier)  # (N, C)
    labels = torch.tensor([r["label"] for r in rows])
    out = classification_metrics(logits, labels, names)
    metrics = {k: out[k] for k in ("acc1", "acc5", "mean_per_class_recall")}
    baselines = {k: out[f"chance_{k}"] for k in metrics}
    preds = logits.argmax(1).tolist()
    thumbs = _thumbs(run, [r["sample_id"] for r in rows[:s.examples]]) if s.modality == "image" else {}
    samples = [{"id": r["sample_id"], "image_png": thumbs.get(r["sample_id"]), "prompt": "zero-shot",
                "prediction": names[p], "references": [names[r["label"]]]} for r, p in zip(rows[:s.examples], preds)]
    return run.result(len(rows), metrics, baselines, "chance", "acc1",
                      details={"confusion": {"labels": names, "matrix": out["confusion"]}, "samples": samples},
                      extra_data={"classes": len(names), "majority_acc1": out["majority_acc1"]})


def _spm_bytes(run) -> bytes:
    return run.text_tokenizer().serialized_model_proto()


# -- linear probe ------------------------------------------------------------------------------------------
def linear_probe(run) -> dict:
    from tasks.linear_probe import linear_probe as fit_and_score

    s = run.suite
    fit = _labelled(run, "train")
    test = _labelled(run, s.split)
    vec_fit, _ = _embed(run, fit, [s.modality], "train")
    vec_test, _ = _embed(run, test, [s.modality])
    X = np.stack([vec_fit[r["sample_id"]][s.modality] for r in fit])
    Xt = np.stack([vec_test[r["sample_id"]][s.modality] for r in test])
    tables = run.data.extra.get("label_names") or {}
    named = [tables[src] for src in s.sources if src in tables]
    out = fit_and_score(X, np.array([r["label"] for r in fit]), Xt, np.array([r["label"] for r in test]),
                        n_classes=len(named[0]) if len(named) == 1 else None)  # chance over the named classes
    metrics = {k: out[k] for k in ("acc1", "mean_per_class_recall")}
    baselines = {k: out[f"majority_{k}"] for k in metrics}
    return run.result(len(test), metrics, baselines, "majority class of train", "acc1",
                      extra_data={"train_n": len(fit), "chance": out["chance"],
                                  "regularization": out["regularization"]}, details={})
