"""Tiny synthetic shards in the shards schema, for the pretraining tests (no corpus stage needed).

Each sample has a class c; its text, image and audio all depend on c, so cross-modal retrieval is
learnable: text = bos, 5 + c, random filler ids, eos; image = a class colour and stripe; audio = a
class-specific band of mel bins lit over random frames.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tasks.recipes import GROUPS

RESOLUTION = 32
MELS = 128


def sample(rng: np.random.Generator, c: int, mods, sample_id: str, split: str, n_classes: int) -> dict:
    row = {"sample_id": sample_id, "split": split, "modalities": list(mods), "text_ids": None,
           "pixels": None, "image_tokens": None, "fbank": None, "fbank_frames": None, "label": c}
    if "text" in mods:
        # filler ids from a small class-specific range: MLM can learn them from the class token
        filler = (40 + 8 * c + rng.integers(0, 8, size=int(rng.integers(3, 10)))).tolist()
        row["text_ids"] = [2, 5 + c, *filler, 3]
    if "image" in mods:
        img = rng.integers(0, 40, size=(3, RESOLUTION, RESOLUTION)).astype(np.uint8)
        img[c % 3] += np.uint8(120 + 100 * (c // 3) // max(1, n_classes // 3))
        band = (c * RESOLUTION) // n_classes
        img[:, band:band + 4, :] = 250
        row["pixels"] = img.tobytes()
        # visual codes that depend on the class and the patch position (learnable MIM targets)
        row["image_tokens"] = ((7 * c + np.arange((RESOLUTION // 8) ** 2)) % 64).astype(np.int16).tolist()
    if "audio" in mods:
        frames = int(rng.integers(24, 60))
        f = rng.normal(-8.0, 1.0, size=(frames, MELS)).astype(np.float32)
        lo = (c * MELS) // n_classes
        f[:, lo:lo + MELS // n_classes] += 6.0
        row["fbank"] = f.astype("<f2").tobytes()
        row["fbank_frames"] = frames
    return row


def write_shards(root: str, *, rows_per_group: dict[str, int], val_per_group: dict[str, int] | None = None,
                 n_classes: int = 8, rows_per_file: int = 64, seed: int = 0,
                 schema_version: str | None = None) -> str:
    """Write `<root>/{train,val}/part-NNNNN.parquet` and return `root`. Also writes `_meta.json`
    holding what a shards manifest's `extra` would (image_resolution, tokenizer ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.data import schema

    rng = np.random.default_rng(seed)
    val_per_group = val_per_group or {g: max(2, n // 4) for g, n in rows_per_group.items()}
    rows_by_split = {"train": [], "val": []}
    for split, counts in (("train", rows_per_group), ("val", val_per_group)):
        for group, n in counts.items():
            for i in range(n):
                rows_by_split[split].append(sample(rng, i % n_classes, GROUPS[group],
                                                   f"{split}/{group}/{i}", split, n_classes))
    files = {}
    for split, rows in rows_by_split.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for k in range(0, max(len(rows), 1), rows_per_file):
            rel = f"{split}/part-{k // rows_per_file:05d}.parquet"
            table = pa.Table.from_pylist(rows[k:k + rows_per_file], schema=schema.shards_schema())
            pq.write_table(table, os.path.join(root, rel), compression="zstd")
            files[rel] = table.num_rows
    meta = {"schema_version": schema_version or schema.SHARDS_SCHEMA_VERSION, "rows": files,
            "extra": {"image_resolution": RESOLUTION, "max_text_tokens": 16,
                      "rows_per_split": {s: len(r) for s, r in rows_by_split.items()},
                      "tokenizers": {"text": {"vocab_size": 512,
                                              "ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "<mask>": 4}},
                                     "visual": None}}}
    with open(os.path.join(root, "_meta.json"), "w") as f:
        json.dump(meta, f)
    return root


def numpy_batch(group: str, n: int, seed: int = 0, n_classes: int = 8) -> dict[str, np.ndarray]:
    """A Ray-Data-like numpy batch of `n` rows of one group (object arrays for list / binary columns)."""
    rng = np.random.default_rng(seed)
    rows = [sample(rng, i % n_classes, GROUPS[group], f"x/{i}", "train", n_classes) for i in range(n)]
    out = {}
    for key in rows[0]:
        col = np.empty(n, dtype=object)
        for i, r in enumerate(rows):
            col[i] = np.asarray(r[key]) if isinstance(r[key], list) else r[key]
        out[key] = col
    return out


def shards_manifest(root: str, stage: str = "shards"):
    """A committed-looking `Manifest` for the files under `root` (from `write_shards`, or `write_instructions`
    whose manifests are of kind `instructions`)."""
    from pipelines.manifest import Manifest, describe_files, fingerprint_of

    with open(os.path.join(root, "_meta.json")) as f:
        meta = json.load(f)
    files = [e for e in describe_files(root, meta["rows"]) if e["path"] != "_meta.json"]
    data = {"stage": stage, "kind": meta.get("kind", "shards"), "key": "fixture", "files": files,
            "schema_version": meta["schema_version"], "extra": meta["extra"], "metrics": {},
            "fingerprint": fingerprint_of("fixture", files)}
    return Manifest(dir=root, data=data, storage_uri=os.path.dirname(root))


def run_pretrain(storage_root: str, manifest, config: dict, *, key: str = "k1", tracking: tuple | None = None,
                 forced: bool = False):
    """Run the `pretrain` kind in-process through `execute_stage`; returns the committed manifest dict.
    `tracking`: (tracking_uri, run_id). `forced`: as `omniway run --force` (train from step 0, replace
    the output of the key)."""
    import pipelines.stages  # noqa: F401 - registers the kinds
    from pipelines.execute import execute_stage
    from pipelines.registry import get_kind
    from pipelines.storage import Storage
    from pipelines.typed import from_dict, to_dict

    cfg = from_dict(get_kind("pretrain").config, config, "pretrain")
    uri, run_id = tracking or (None, None)
    return execute_stage(pipeline="t", stage="pretrain", kind="pretrain", key=key, config=cfg,
                         config_dict=to_dict(cfg), inputs={"shards": manifest}, storage=Storage(storage_root),
                         run_id=run_id, tracking_uri=uri, forced=forced)


def write_instructions(root: str, *, rows_per_group: dict[str, int], n_classes: int = 4, rows_per_file: int = 32,
                       seed: int = 0) -> str:
    """Instruction rows in the instructions schema under `root` (and `_meta.json`, as `write_shards`): one turn
    per sample, the prompt holds a class token (5 + c) and the sample's media, the answer two class-specific
    ids and eos, so the answer loss can fall fast."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.data import schema

    rng = np.random.default_rng(seed)
    files = {}
    for split, scale in (("train", 1), ("val", 4)):
        rows = []
        for group, n in rows_per_group.items():
            for i in range(max(2, n // scale)):
                c = i % n_classes
                base = sample(rng, c, GROUPS[group], f"{split}/{group}/{i}", split, n_classes)
                prompt = [2, 20, 21, 5 + c, 22]
                answer = [40 + 2 * c, 41 + 2 * c, 3]
                base.update(text_ids=prompt + answer, loss_mask=[False] * len(prompt) + [True] * len(answer),
                            causal_start=len(prompt), source="fixture", task="conversation",
                            prompt=f"class {c}?", answer=f"answer {c}")
                base.pop("label")
                rows.append(base)
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for k in range(0, len(rows), rows_per_file):
            rel = f"{split}/part-{k // rows_per_file:05d}.parquet"
            table = pa.Table.from_pylist(rows[k:k + rows_per_file], schema=schema.instructions_schema())
            pq.write_table(table, os.path.join(root, rel), compression="zstd")
            files[rel] = table.num_rows
    meta = {"schema_version": schema.INSTRUCTIONS_SCHEMA_VERSION, "rows": files, "kind": "instructions",
            "extra": {"image_resolution": RESOLUTION, "max_text_tokens": 16,
                      "tokenizers": {"text": {"vocab_size": 512, "sha256": "fixture", "model": None,
                                              "ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "<mask>": 4}},
                                     "visual": None}}}
    with open(os.path.join(root, "_meta.json"), "w") as f:
        json.dump(meta, f)
    return root
