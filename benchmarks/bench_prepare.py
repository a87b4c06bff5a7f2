"""Shards path over real demo samples: Ray Data (actor pool) against a single-process loop.

Both paths do the whole `shards` job over the same corpus and write the same files:
`Featurizer.rows` (sentencepiece ids, Pillow decode + resize + pixels, soundfile +
log-mel) on every row, then Parquet part files of `rows_per_file` rows (zstd) -- the
loop cuts its rows with `PartWriter` in one process; the Ray path is the stage's own
`write_shards` (2 actors on a 2-CPU local Ray that is started before timing either
path; actor start-up included, as are the loop's imports). The two outputs must be
byte-identical. Also measured single-process (= per core, CPU time, best of 3):
images/s for decode + resize + pixels, and sentencepiece lines/s (batches of 1024).

    .venv/bin/python benchmarks/bench_prepare.py [--cpus 2] [--docs 40]

Last line: `ray_over_loop: <ratio>` (targets: >= 1.6 on 2 cores; >= 100 images/s per
core; >= 40,000 lines/s per core).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def build_inputs(root: str, docs: int):
    import pipelines.stages  # noqa: F401
    from pipelines.data.config import CorpusConfig, SourceConfig, TextTokenizerConfig
    from pipelines.execute import execute_stage
    from pipelines.manifest import Manifest
    from pipelines.storage import Storage

    storage = Storage(root)

    def run(stage, kind, cfg, inputs):
        data = execute_stage(pipeline="bench", stage=stage, kind=kind, key="k", config=cfg,
                             config_dict={}, inputs=inputs, storage=storage)
        return Manifest(dir=storage.output_dir("bench", stage, "k"), data=data,
                        storage_uri=storage.root)

    corpus = run("corpus", "corpus", CorpusConfig(sources=[
        SourceConfig(name="tuxpaint", format="tuxpaint"),
        SourceConfig(name="asterisk", format="asterisk"),
        SourceConfig(name="digits", format="digits", limit=400),
        SourceConfig(name="pydocs", format="text", path="/usr/share/doc/python3.11/html/_sources",
                     extensions=[".rst.txt"], text_unit="paragraph", max_files=docs),
    ], rows_per_file=256), {})
    tok = run("tok", "text-tokenizer", TextTokenizerConfig(vocab_size=8000), {"corpus": corpus})
    return corpus, tok


def corpus_rows(corpus) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for split in ("train", "val"):
        for path in corpus.paths(".parquet", prefix=f"{split}/"):
            rows += pq.read_table(path).to_pylist()
    return rows


def loop_shards(corpus_rows_: list[dict], spm_model: bytes, cfg, out_dir: str) -> int:
    """The single-process baseline: same per-sample code, same part files."""
    import pyarrow as pa

    from pipelines.data import schema
    from pipelines.data.featurize import Featurizer
    from pipelines.data.writer import PartWriter

    feat = Featurizer(spm_model, cfg)
    sch = schema.shards_schema()
    n = 0
    for split in schema.SPLITS:
        rows = [r for r in corpus_rows_ if r["split"] == split]
        writer = PartWriter(out_dir, split, sch, cfg.rows_per_file)
        for i in range(0, len(rows), cfg.batch_size):
            writer.add(pa.Table.from_pylist(feat.rows(rows[i:i + cfg.batch_size]), schema=sch))
        writer.close()
        n += writer.rows
    return n


def file_hashes(root: str) -> dict[str, str]:
    import hashlib

    out = {}
    for split in sorted(os.listdir(root)):
        for name in sorted(os.listdir(os.path.join(root, split))):
            with open(os.path.join(root, split, name), "rb") as f:
                out[f"{split}/{name}"] = hashlib.sha256(f.read()).hexdigest()
    return out


def per_core(fn, items, repeat: int = 3) -> float:
    """Items per CPU-second of this process, best of `repeat` passes."""
    best = float("inf")
    for _ in range(repeat):
        c = time.process_time()
        fn(items)
        best = min(best, time.process_time() - c)
    return len(items) / max(best, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--docs", type=int, default=40, help="python doc pages in the corpus")
    args = ap.parse_args()

    import ray

    from pipelines.data.config import ShardsConfig
    from pipelines.data.image import image_pixels
    from pipelines.data.raycompat import ensure_ray
    from pipelines.data.shards_impl import write_shards

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ensure_ray()
    root = tempfile.mkdtemp(prefix="omniway-bench-")
    try:
        corpus, tok = build_inputs(root, args.docs)
        spm_model = open(tok.path("text.model"), "rb").read()
        cfg = ShardsConfig(num_workers=args.cpus)
        rows = corpus_rows(corpus)
        n = len(rows)
        mods = {m: sum(m in r["modalities"] for r in rows) for m in ("text", "image", "audio")}
        print(f"samples: {n} ({mods}), rows_per_file {cfg.rows_per_file}")
        assert n >= 1000, "the benchmark needs >= 1,000 samples"

        # Single-process loop over the same rows: same functions, same files.
        loop_dir = os.path.join(root, "loop")
        t = time.perf_counter()
        loop_rows = loop_shards(rows, spm_model, cfg, loop_dir)
        loop_s = time.perf_counter() - t

        # Ray Data: the shards stage's own path (actor pool builds whole part files).
        ray_dir = os.path.join(root, "ray")
        t = time.perf_counter()
        parts = write_shards(corpus, spm_model, cfg, ray_dir)
        ray_s = time.perf_counter() - t
        ray_rows = sum(p["rows"] for p in parts)
        assert ray_rows == loop_rows == n, (ray_rows, loop_rows, n)
        loop_files, ray_files = file_hashes(loop_dir), file_hashes(ray_dir)
        assert loop_files == ray_files, "the Ray path and the loop wrote different shards"

        images = [r["image"] for r in rows if r["image"] is not None]
        img_rate = per_core(lambda xs: [image_pixels(d, cfg.image_resolution) for d in xs], images)

        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=spm_model)
        lines = [ln for r in rows if r["text"] for ln in r["text"].splitlines() if ln.strip()]
        lines = (lines * (1 + 100_000 // max(1, len(lines))))[:100_000]
        spm_rate = per_core(lambda xs: [sp.encode(xs[i:i + 1024], num_threads=1)
                                        for i in range(0, len(xs), 1024)], lines)

        print(f"loop: {n / loop_s:.1f} samples/s ({loop_s:.2f}s, 1 process)")
        print(f"ray:  {n / ray_s:.1f} samples/s ({ray_s:.2f}s, {args.cpus} actors on "
              f"{args.cpus} CPUs, actor start-up included; {len(ray_files)} part files, "
              f"identical to the loop's)")
        print(f"images_per_s_per_core: {img_rate:.1f} "
              f"({len(images)} images, decode + resize {cfg.image_resolution} + pixels)")
        print(f"spm_lines_per_s_per_core: {spm_rate:.0f} ({len(lines)} lines)")
        print(f"ray_over_loop: {loop_s / ray_s:.2f}")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
