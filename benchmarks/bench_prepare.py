"""Shards path over real demo samples: Ray Data (actor pool) against a single-process loop.

Both paths call the same per-sample code (`Featurizer.rows`: sentencepiece ids, Pillow
decode + resize + pixels, soundfile + log-mel) over the same corpus rows; the Ray path
is the shards stage's own `iter_shards` (2 actors on a 2-CPU local Ray, actor start-up
included). Also measured single-process (= per core): images/s for decode + resize +
pixels, and sentencepiece lines/s.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--docs", type=int, default=40, help="python doc pages in the corpus")
    args = ap.parse_args()

    import ray

    from pipelines.data.config import ShardsConfig
    from pipelines.data.featurize import Featurizer
    from pipelines.data.image import image_pixels
    from pipelines.data.shards_impl import iter_shards

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    root = tempfile.mkdtemp(prefix="omniway-bench-")
    try:
        corpus, tok = build_inputs(root, args.docs)
        spm_model = open(tok.path("text.model"), "rb").read()
        cfg = ShardsConfig(num_workers=args.cpus)
        rows = corpus_rows(corpus)
        n = len(rows)
        mods = {m: sum(m in r["modalities"] for r in rows) for m in ("text", "image", "audio")}
        print(f"samples: {n} ({mods})")
        assert n >= 1000, "the benchmark needs >= 1,000 samples"

        # Single-process loop over the same rows, same batch size, same function.
        t = time.perf_counter()
        feat = Featurizer(spm_model, cfg)
        loop_rows = 0
        for i in range(0, n, cfg.batch_size):
            loop_rows += len(feat.rows(rows[i:i + cfg.batch_size]))
        loop_s = time.perf_counter() - t

        # Ray Data: the shards stage's own path (actor pool, ordered), consumed, not written.
        t = time.perf_counter()
        ray_rows = sum(b.num_rows for b in iter_shards(corpus, spm_model, cfg))
        ray_s = time.perf_counter() - t
        assert ray_rows == loop_rows == n, (ray_rows, loop_rows, n)

        images = [r["image"] for r in rows if r["image"] is not None]
        t = time.perf_counter()
        for data in images:
            image_pixels(data, cfg.image_resolution)
        img_s = time.perf_counter() - t

        lines = [ln for r in rows if r["text"] for ln in r["text"].splitlines() if ln.strip()]
        lines = (lines * (1 + 100_000 // max(1, len(lines))))[:100_000]
        t = time.perf_counter()
        for i in range(0, len(lines), 1024):
            feat.sp.encode(lines[i:i + 1024], num_threads=1)
        spm_s = time.perf_counter() - t

        print(f"loop: {n / loop_s:.1f} samples/s ({loop_s:.2f}s, 1 process)")
        print(f"ray:  {n / ray_s:.1f} samples/s ({ray_s:.2f}s, {args.cpus} actors on "
              f"{args.cpus} CPUs, actor start-up included)")
        print(f"images_per_s_per_core: {len(images) / img_s:.1f} "
              f"({len(images)} images, decode + resize {cfg.image_resolution} + pixels)")
        print(f"spm_lines_per_s_per_core: {len(lines) / spm_s:.0f} ({len(lines)} lines)")
        print(f"ray_over_loop: {loop_s / ray_s:.2f}")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
