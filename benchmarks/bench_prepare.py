"""Shards path over real demo samples: Ray Data (2 workers) against a single-process loop.

Input: the demo pipeline's own corpus (pipelines/configs/demo.yaml: tuxpaint stamps, asterisk
prompts, scikit-learn digits, Python doc paragraphs; ~14.9k samples) and text tokenizer, built
first, untimed, on the 2-CPU local Ray that both paths then share.

Both paths do the whole `shards` job over the same corpus and write the same files:
`Featurizer.rows` (sentencepiece ids, Pillow decode + resize + pixels, soundfile + numpy log-mel)
on every row, then Parquet part files of `rows_per_file` rows (zstd). The two outputs must be
byte-identical.

  loop   one process (this one), the same job as the stage, everything timed: read the corpus
         files, Featurizer.rows on batches of `batch_size` rows, `PartWriter` cuts and writes the
         part files, then the sha256 of every file and the counts by modality that the manifest
         records (the corpus read and the hashing + counts are printed apart).
  ray    the stage's own `write_shards` (pipelines/data/shards_build.py), everything timed: planning
         from the corpus files, Ray Data tasks (2 at a time, 1 CPU each) that read their corpus
         slices, featurize them and write whole part files with their sha256 (a part heavier
         than a worker's share of the work left is cut into chunks, which the driver encodes
         and writes). The Ray workers are the ones that built the corpus just before
         (Ray keeps task workers, as in `omniway run`, where shards follows other Ray Data
         stages): they have imported Ray Data already, and set up the tokenizer in their first
         task, timed. `--fresh-ray` restarts Ray before each Ray run instead (brand-new
         workers: ~2 CPU-seconds of imports each, timed).

Both paths run with omniway's allocator settings (pipelines/allocator_env.py), as `omniway run`
sets them for its driver and Ray workers. Each path runs `--repeat` times, alternating, and
keeps its best time (the machine may be shared; interference only ever slows a run; the
first run of either path is slower, faulting in its memory). The CPU seconds of each path are
printed too (the Ray path's: the driver plus every process of the local Ray -- workers,
raylet, GCS), with the ratio that `cpus` idle cores would give: a load-independent check of
the Ray path's overhead. On a shared
Linux machine with sched_autogroup on, CPU is shared per session first: while other sessions are
busy, all of this benchmark's processes (the local Ray included) together get one session's
share, so only a run on an otherwise idle machine shows what the second core buys; the load
average is printed around the timed runs. Also measured single-process (= per core, CPU time,
best of 3): images/s for decode + resize + pixels, and sentencepiece lines/s (batches of 1024).

    .venv/bin/python benchmarks/bench_prepare.py [--cpus 2] [--docs N] [--repeat 3] [--fresh-ray]

Last line: `ray_over_loop: <ratio>` (targets: >= 1.6 on 2 cores; >= 100 images/s per
core; >= 40,000 lines/s per core).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
from pipelines.allocator_env import apply_to_this_process  # noqa: E402
from pipelines.data.raycompat import FIXED_SIZE_ENV  # noqa: E402

apply_to_this_process()  # before numpy / pyarrow load, as the `omniway` command does
# this process plays the stage's (it calls write_shards) on an embedded Ray, as `omniway run` does
os.environ[FIXED_SIZE_ENV] = "1"
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pipelines", "configs",
                    "demo.yaml")


def build_inputs(root: str, docs: int | None):
    """The demo pipeline's own corpus and text tokenizer (pipelines/configs/demo.yaml: tuxpaint
    stamps, asterisk prompts, scikit-learn digits, Python doc paragraphs), built untimed."""
    import pipelines.stages  # noqa: F401
    from pipelines.config import load_pipeline
    from pipelines.execute import execute_stage
    from pipelines.manifest import Manifest
    from pipelines.storage import Storage

    storage = Storage(root)
    demo = load_pipeline(DEMO, workdir=os.path.join(root, "work")).stages
    corpus_cfg, tok_cfg = demo["corpus"].config, demo["text-tokenizer"].config
    if docs is not None:
        for source in corpus_cfg.sources:
            if source.name == "pydocs":
                source.max_files = docs

    def run(stage, kind, cfg, inputs):
        data = execute_stage(pipeline="bench", stage=stage, kind=kind, key="k", config=cfg,
                             config_dict={}, inputs=inputs, storage=storage)
        return Manifest(dir=storage.output_dir("bench", stage, "k"), data=data,
                        storage_uri=storage.root)

    corpus = run("corpus", "corpus", corpus_cfg, {})
    tok = run("tok", "text-tokenizer", tok_cfg, {"corpus": corpus})
    return corpus, tok


def corpus_rows(corpus) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for split in ("train", "val"):
        for path in corpus.paths(".parquet", prefix=f"{split}/"):
            rows += pq.read_table(path).to_pylist()
    return rows


def loop_shards(corpus, spm_model: bytes, cfg, out_dir: str) -> dict:
    """The single-process baseline: the stage's job (corpus files in; part files, their
    sha256 and counts out) with the same per-sample code and the same part files.

    Returns {rows, sha256: {file: hex}, modalities: Counter, read_s, hash_s}."""
    import pyarrow as pa

    from pipelines.data import schema
    from pipelines.data.featurize import Featurizer
    from pipelines.data.shards_task import part_stats
    from pipelines.data.writer import PartWriter
    from pipelines.manifest import sha256_file

    t = time.perf_counter()
    corpus_rows_ = corpus_rows(corpus)
    read_s = time.perf_counter() - t
    feat = Featurizer(spm_model, cfg)
    sch = schema.shards_schema()
    n, files, hash_s, mods = 0, [], 0.0, Counter()
    for split in schema.SPLITS:
        rows = [r for r in corpus_rows_ if r["split"] == split]
        writer = PartWriter(out_dir, split, sch, cfg.rows_per_file)
        for i in range(0, len(rows), cfg.batch_size):
            table = pa.Table.from_pylist(feat.rows(rows[i:i + cfg.batch_size]), schema=sch)
            t = time.perf_counter()
            mods.update(part_stats(table, 0)["modalities"])
            hash_s += time.perf_counter() - t
            writer.add(table)
        files += writer.close()
        n += writer.rows
    t = time.perf_counter()
    sha = {rel: sha256_file(os.path.join(out_dir, rel)) for rel in files}
    hash_s += time.perf_counter() - t
    return {"rows": n, "sha256": sha, "modalities": mods, "read_s": read_s, "hash_s": hash_s}


def file_hashes(root: str) -> dict[str, str]:
    """sha256 of every file under `<root>/<split>/`, by relative path."""
    from pipelines.manifest import sha256_file

    return {f"{split}/{name}": sha256_file(os.path.join(root, split, name))
            for split in sorted(os.listdir(root))
            for name in sorted(os.listdir(os.path.join(root, split)))}


def ray_processes_cpu() -> float:
    """CPU seconds used so far by this process's descendants (the local Ray: GCS, raylet, workers)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def autogroup() -> str:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return "on" if f.read().strip() == "1" else "off"
    except OSError:
        return "n/a"


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
    ap.add_argument("--docs", type=int, default=None,
                    help="python doc pages in the corpus (default: the demo's max_files)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each path; the best counts")
    ap.add_argument("--fresh-ray", action="store_true",
                    help="restart Ray before each Ray run (brand-new worker processes)")
    args = ap.parse_args()

    import ray

    from pipelines.stages.shards import DEFAULT_RESOLUTION, ShardsConfig
    from pipelines.data.image import image_pixels
    from pipelines.data.raycompat import ensure_ray
    from pipelines.data.shards_build import write_shards
    from pipelines.runner import ray_runtime_env

    # the workers get what `omniway run`'s embedded Ray gives them (see connect_ray)
    runtime_env = ray_runtime_env(embedded=True, dashboard=False)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             runtime_env=runtime_env)
    ensure_ray()
    root = tempfile.mkdtemp(prefix="omniway-bench-")
    try:
        corpus, tok = build_inputs(root, args.docs)
        spm_model = open(tok.path("text.model"), "rb").read()
        cfg = ShardsConfig(num_workers=args.cpus, image_resolution=DEFAULT_RESOLUTION)
        rows = corpus_rows(corpus)
        n = len(rows)
        mods = {m: sum(m in r["modalities"] for r in rows) for m in ("text", "image", "audio")}
        print(f"samples: {n} ({mods}), rows_per_file {cfg.rows_per_file}")
        assert n >= 1000, "the benchmark needs >= 1,000 samples"

        loop_times, ray_times, cpu, loop_parts = [], [], [], []
        load_before = os.getloadavg()[0]
        for rep in range(args.repeat):
            # Single-process loop over the same rows: same functions, same files.
            loop_dir = os.path.join(root, f"loop{rep}")
            c, t = time.process_time(), time.perf_counter()
            loop = loop_shards(corpus, spm_model, cfg, loop_dir)
            loop_times.append(time.perf_counter() - t)
            loop_cpu = time.process_time() - c
            loop_parts.append((loop["read_s"], loop["hash_s"]))

            if args.fresh_ray:  # brand-new workers (untimed: Ray's own start)
                ray.shutdown()
                ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                         runtime_env=runtime_env)
                ensure_ray()
                time.sleep(3)
            # Ray Data: the shards stage's own path.
            ray_dir = os.path.join(root, f"ray{rep}")
            c, rc, t = time.process_time(), ray_processes_cpu(), time.perf_counter()
            parts = write_shards(corpus, spm_model, cfg, ray_dir)
            ray_times.append(time.perf_counter() - t)
            cpu.append((loop_cpu, time.process_time() - c, ray_processes_cpu() - rc))
            ray_rows = sum(p["rows"] for p in parts)
            assert ray_rows == loop["rows"] == n, (ray_rows, loop["rows"], n)
            # the loop hashed its own files; the Ray path's files and reported hashes must match
            ray_files = file_hashes(ray_dir)
            assert loop["sha256"] == ray_files, "the Ray path and the loop wrote different shards"
            assert {p["path"]: p["sha256"] for p in parts} == ray_files
            ray_mods = Counter()
            for p in parts:
                ray_mods.update(p["stats"]["modalities"])
            assert ray_mods == loop["modalities"], (ray_mods, loop["modalities"])
            print(f"run {rep}: loop {loop_times[-1]:.2f}s ({cpu[-1][0]:.2f} CPU-s), ray "
                  f"{ray_times[-1]:.2f}s ({cpu[-1][1]:.2f} CPU-s driver + {cpu[-1][2]:.2f} CPU-s "
                  f"Ray processes)", flush=True)
            shutil.rmtree(loop_dir)
            shutil.rmtree(ray_dir)
        loop_s, ray_s = min(loop_times), min(ray_times)
        print(f"machine: {os.cpu_count()} CPUs visible, load average {load_before:.2f} before / "
              f"{os.getloadavg()[0]:.2f} after the timed runs, sched_autogroup {autogroup()}")
        loop_cpu, ray_cpu = min(c[0] for c in cpu), min(c[1] + c[2] for c in cpu)

        images = [r["image"] for r in rows if r["image"] is not None]
        img_rate = per_core(lambda xs: [image_pixels(d, cfg.image_resolution) for d in xs], images)

        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=spm_model)
        lines = [ln for r in rows if r["text"] for ln in r["text"].splitlines() if ln.strip()]
        lines = (lines * (1 + 100_000 // max(1, len(lines))))[:100_000]
        spm_rate = per_core(lambda xs: [sp.encode(xs[i:i + 1024], num_threads=1)
                                        for i in range(0, len(xs), 1024)], lines)

        workers = "fresh Ray" if args.fresh_ray else "workers that built the corpus"
        read_s, hash_s = loop_parts[loop_times.index(loop_s)]
        print(f"loop: {n / loop_s:.1f} samples/s ({loop_s:.2f}s best of {args.repeat}, 1 process; "
              f"of which reading the corpus {read_s:.2f}s, sha256 + counts {hash_s:.2f}s)")
        print(f"ray:  {n / ray_s:.1f} samples/s ({ray_s:.2f}s best of {args.repeat}, {args.cpus} "
              f"tasks at a time on {args.cpus} CPUs, {workers}, per-run setup included; "
              f"{len(ray_files)} part files, identical to the loop's)")
        print(f"images_per_s_per_core: {img_rate:.1f} "
              f"({len(images)} images, decode + resize {cfg.image_resolution} + pixels)")
        print(f"spm_lines_per_s_per_core: {spm_rate:.0f} ({len(lines)} lines)")
        print(f"cpu: loop {loop_cpu:.2f} CPU-s, ray {ray_cpu:.2f} CPU-s (driver + every Ray process; "
              f"least of {args.repeat}): on {args.cpus} idle cores Ray could reach "
              f"{args.cpus * loop_cpu / ray_cpu:.2f}x the loop")
        print(f"ray_over_loop: {loop_s / ray_s:.2f}")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
