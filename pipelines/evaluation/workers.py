"""Ray Data actors of the evaluate stage: the model is loaded once per actor, batches run under
``torch.inference_mode``, and the same code runs on the embedded Ray and on a cluster (``num_gpus`` per actor
when the config asks).

    embeddings(ds, source, ...)   -> {sample_id: {modality: (E,) float32}}
    generations(ds, source, ...)  -> {sample_id: answer text}
"""

from __future__ import annotations

import numpy as np

from tasks.recipes import GROUPS, group_of

# the stored columns of each modality (the shards and instructions schemas)
MEDIA_COLUMNS = {"text": ("text_ids",), "image": ("pixels",), "audio": ("fbank", "fbank_frames")}


def _device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus and torch.cuda.is_available() else "cpu"


def _to(tensors: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in tensors.items()}


class EmbedWorker:
    """Unit embeddings of the given modalities of each row.

    Args:
        source: the model source (``pipelines.evaluation.models``).
        resolution: R of the rows' stored pixels.
        ids: the text tokenizer's special ids.
        modalities: shard modalities to embed (each alone, as pretraining's validation does).
        threads: torch threads of this actor (its CPUs).
        num_gpus: GPUs of this actor (0: CPU).
    """

    def __init__(self, source: dict, resolution: int, ids: dict, modalities: list[str], threads: int = 1,
                 num_gpus: float = 0):
        import torch

        from pipelines.evaluation.models import EmbeddingModel
        from tasks import BatchSpec, Collator, get_recipe

        torch.set_num_threads(max(1, int(threads)))
        self.model = EmbeddingModel(source)
        self.device = _device(num_gpus)
        self.model.backbone.to(self.device)
        if self.model.contrast is not None:
            self.model.contrast.to(self.device)
        self.collator = Collator(BatchSpec.for_model(self.model.config, resolution, ids), get_recipe("omni"))
        self.modalities = list(modalities)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import hashlib

        n = len(batch["sample_id"])
        out = {"sample_id": batch["sample_id"]}
        for m in self.modalities:
            rows = [i for i, mods in enumerate(batch["modalities"]) if m in mods]
            emb = np.zeros((n, self.model.embed_dim), dtype=np.float32)  # (B, E); zeros where a row lacks m
            digest = np.full(n, "", dtype=object)
            if rows:
                t = self.collator.collate(m, {c: [batch[c][i] for i in rows] for c in MEDIA_COLUMNS[m]})
                emb[rows] = self.model.embed(_to(t, self.device), m).cpu().numpy()
                # equal content, equal digest: retrieval counts identical media as one item
                raw = batch[MEDIA_COLUMNS[m][0]]
                for i in rows:
                    data = raw[i] if isinstance(raw[i], bytes) else np.asarray(raw[i]).tobytes()
                    digest[i] = hashlib.sha1(data).hexdigest()
            out[f"emb_{m}"] = emb
            out[f"hash_{m}"] = digest
        return out


class GenerateWorker:
    """Answers of an instruct model to each instruction row's prompt: its ids before its last answer (the
    whole conversation before the turn the reference answers), attended as in training: its earlier
    answers on (``text_causal_start`` = the first answer's first token) causal.

    Args:
        source: the model source (an `instruct` stage).
        decoding: keyword arguments of ``model.generation.generate`` (max_new_tokens, num_beams, ...).
        resolution: R of the rows' stored pixels.
        ids: the text tokenizer's special ids of the rows.
        threads / num_gpus: as ``EmbedWorker``'s.
    """

    def __init__(self, source: dict, decoding: dict, resolution: int, ids: dict, threads: int = 1,
                 num_gpus: float = 0):
        import tempfile

        import torch

        from pipelines.evaluation.models import load_assistant
        from tasks import BatchSpec, Collator, get_recipe

        torch.set_num_threads(max(1, int(threads)))
        self._dir = tempfile.TemporaryDirectory(prefix="omniway-eval-")
        self.bot = load_assistant(source, self._dir.name)
        self.device = _device(num_gpus)
        self.bot.model.to(self.device)
        spec = BatchSpec.for_model(self.bot.model.backbone.config, resolution, ids)
        self.collator = Collator(spec, get_recipe("omni"))
        self.decoding = dict(decoding)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        n = len(batch["sample_id"])
        answers: list[str] = [""] * n
        by_group: dict[str, list[int]] = {}
        for i, mods in enumerate(batch["modalities"]):
            by_group.setdefault(group_of(mods), []).append(i)
        for group, rows in by_group.items():
            cols = {c: [batch[c][i] for i in rows] for m in GROUPS[group] for c in MEDIA_COLUMNS[m]}
            starts = [answer_starts(batch["loss_mask"][i]) for i in rows]
            cols["text_ids"] = [np.asarray(batch["text_ids"][i])[:s[-1]] for i, s in zip(rows, starts)]
            t = _to(self.collator.collate(group, cols), self.device)
            # one-turn rows: the start is the prompt's end, the whole prompt bidirectional
            t["text_causal_start"] = torch.tensor([s[0] for s in starts], dtype=torch.long, device=self.device)
            with torch.inference_mode():
                for i, text in zip(rows, self.bot.generate(t, **self.decoding)):
                    answers[i] = text
        return {"sample_id": batch["sample_id"], "prediction": np.asarray(answers, dtype=object)}


def answer_starts(loss_mask) -> list[int]:
    """Index of the first token of each answer (each run of True in a row's loss mask), in order: the first
    is the row's `causal_start`."""
    mask = np.asarray(loss_mask, dtype=bool)
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    if not len(starts):
        raise ValueError("an instruction row without an answer token")
    return [int(i) for i in starts]


def last_answer_start(loss_mask) -> int:
    """Index of the first token of the last answer: the prompt of the turn the row's reference answers is
    everything before it (one turn: the `causal_start`)."""
    return answer_starts(loss_mask)[-1]


def _map(ds, worker, kwargs: dict, *, batch_size: int, num_workers: int, cpus: float, num_gpus: float):
    import ray

    from pipelines.data.raycompat import actor_pool_fit

    size, cpus = actor_pool_fit(ray, num_workers, cpus)
    kwargs = {**kwargs, "threads": cpus}
    return ds.map_batches(worker, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=size), num_cpus=cpus, num_gpus=num_gpus or None)


def embeddings(ds, source: dict, *, resolution: int, ids: dict, modalities: list[str], batch_size: int,
               num_workers: int, cpus: float, num_gpus: float) -> tuple[dict, dict]:
    """Run ``EmbedWorker`` over ``ds`` (rows may lack some of ``modalities``). Returns (vectors, digests):
    sample id -> modality -> (E,) float32 unit vector, and sample id -> modality -> sha1 of its content."""
    kwargs = dict(source=source, resolution=resolution, ids=ids, modalities=modalities, num_gpus=num_gpus)
    vectors: dict[str, dict[str, np.ndarray]] = {}
    digests: dict[str, dict[str, str]] = {}
    for b in _map(ds, EmbedWorker, kwargs, batch_size=batch_size, num_workers=num_workers, cpus=cpus,
                  num_gpus=num_gpus).iter_batches(batch_format="numpy", batch_size=None):
        for i, sid in enumerate(b["sample_id"]):
            sid = str(sid)
            have = [m for m in modalities if b[f"hash_{m}"][i]]
            vectors[sid] = {m: np.asarray(b[f"emb_{m}"][i], dtype=np.float32) for m in have}
            digests[sid] = {m: str(b[f"hash_{m}"][i]) for m in have}
    return vectors, digests


def generations(ds, source: dict, *, decoding: dict, resolution: int, ids: dict, batch_size: int, num_workers: int,
                cpus: float, num_gpus: float) -> dict[str, str]:
    """Run ``GenerateWorker`` over ``ds``; sample id -> answer."""
    kwargs = dict(source=source, decoding=decoding, resolution=resolution, ids=ids, num_gpus=num_gpus)
    out: dict[str, str] = {}
    for b in _map(ds, GenerateWorker, kwargs, batch_size=batch_size, num_workers=num_workers, cpus=cpus,
                  num_gpus=num_gpus).iter_batches(batch_format="numpy", batch_size=None):
        out.update({str(s): str(p) for s, p in zip(b["sample_id"], b["prediction"])})
    return out
