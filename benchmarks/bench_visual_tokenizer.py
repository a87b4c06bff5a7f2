"""Images/s tokenized by the VQ-KD visual tokenizer: Ray Data actors on 2 CPUs vs a plain loop.

Same images (tuxpaint stamps decoded to 224 px, the resolution of real runs -- the demo pipeline
trains at 112 -- decoded before any timing),
same weights (a freshly initialised demo-size tokenizer: speed does not depend on training), same
tokenizer code (`pipelines.visual_tokenizer.encoder.load_local` -> `TokenEncoder`, what the shards
stage calls), same run:

  loop (default threads)   one process (this one): `enc(images[i:i + 32])` over the images, batches of
                           32 (the stage's `encode_batch_size`), torch's default intra-op threads (= the
                           2 visible cores here). This is the loop's natural setting.
  loop (2 threads)         the same with torch.set_num_threads(2) (the same total threads as Ray)
  loop (1 thread)          the same with torch.set_num_threads(1) (for reference: what one actor does)
  ray actors               Ray Data map_batches over 2 actors x 1 CPU x 1 torch thread (one actor per
                           core; torch threads beyond that oversubscribe), the same `enc` on batches of
                           32, weights loaded once per actor, pixels put in the object store before
                           timing in blocks of 4 batches (`--batches-per-block`), ids back in input
                           order. Blocks of one batch each cost ~25 ms of Ray Data overhead per 32
                           images (task stats, a memory-poll thread per task, (de)serialization):
                           steady state was ~470 images/s with them, ~860 with blocks of 4 batches.

Each loop is warmed up (one batch) and timed twice, before and after the Ray run; its best counts (a
multi-threaded loop loses badly to any neighbour on a shared machine). Ray is reported twice: from
submission (actor start: `import torch`, weight loading) and in steady state (from the first output
block on, which is what a long shards run sees). `ray_over_loop_1_thread` (steady Ray / 1-thread loop)
is Ray's parallel efficiency: 2.0 is perfect on 2 cores.

Why 1.6 over the natural loop is out of reach on 2 idle cores: Ray cannot beat 2 x the 1-thread
loop (two one-thread copies of the same work), while the natural loop already runs torch on both
cores. So ray_over_loop <= 2 x loop(1 thread) / loop(default threads) -- printed as
`ray_over_loop_bound`: two torch threads gave 1.5x - 1.8x one thread on a quiet machine here
(1.41x in an earlier measurement), i.e. a bound of 1.1 - 1.4. On a busy machine the multi-threaded
loop collapses instead (its threads wait for each other whenever a neighbour takes a core) and the
ratio can exceed 1.6 for that reason alone: read it together with the loop lines above it.

Last line: `ray_over_loop: <steady-state ray images/s / best of the two multi-thread loops>`.

    python benchmarks/bench_visual_tokenizer.py [--images 3072] [--batch 32] [--cpus 2] [--batches-per-block 4]
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

DEMO = dict(image_resolution=224, patch_size=16, dim=64, depth=2, heads=2, ffn_dim=128, decoder_depth=1,
            codebook_size=512, code_dim=32)


def load_images(n: int, res: int) -> np.ndarray:
    from pipelines.data.image import image_pixels

    paths = sorted(glob.glob("/usr/share/tuxpaint/stamps/**/*.png", recursive=True))
    out = [image_pixels(open(p, "rb").read(), res) for p in paths[:n]]
    while len(out) < n:  # fewer stamps than asked: repeat them
        out += out[: n - len(out)]
    return np.stack(out)  # (n, 3, R, R) uint8


class TokenizeActor:
    """Ray Data actor: weights loaded once, one torch thread (one actor per CPU)."""

    def __init__(self, directory: str, batch: int):
        import torch

        from pipelines.visual_tokenizer.encoder import load_local

        torch.set_num_threads(1)
        self.encoder = load_local(directory, batch)

    def __call__(self, batch: dict) -> dict:
        return {"ids": self.encoder(batch["data"])}  # (B, 3, R, R) uint8 -> (B, N) int16


def time_loop(directory: str, images: np.ndarray, batch: int, threads: int | None) -> float:
    import torch

    from pipelines.visual_tokenizer.encoder import load_local

    default = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    enc = load_local(directory, batch)
    enc(images[:batch])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(images), batch):
        enc(images[i:i + batch])
    seconds = time.perf_counter() - t
    torch.set_num_threads(default)
    return len(images) / seconds


def time_ray(directory: str, images: np.ndarray, batch: int, workers: int,
             batches_per_block: int = 4) -> tuple[float, float, np.ndarray]:
    """(images/s including actor start, images/s once the first output is out, ids in input order)."""
    import ray

    from pipelines.data.raycompat import no_ramp_up

    # blocks of a few batches: each actor call still tokenizes `batch` images at a time (as the loop
    # does), while Ray Data's per-task costs (stats, a memory-poll thread, (de)serialization) are paid
    # once per block; many blocks, so both actors stay fed to the end
    step = batch * batches_per_block
    blocks = [images[i:i + step] for i in range(0, len(images), step)]
    ds = ray.data.from_numpy(blocks)  # column "data"
    ds = ds.map_batches(TokenizeActor, fn_constructor_args=(directory, batch), batch_size=batch,
                        batch_format="numpy", num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(size=workers))
    no_ramp_up(ds)  # all actors busy from the first block (see pipelines.data.raycompat)
    t = time.perf_counter()
    first, parts = None, []
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if first is None:
            first, first_rows = time.perf_counter(), len(out["ids"])
        parts.append(out["ids"])
    end = time.perf_counter()
    ids = np.concatenate(parts)
    steady = (len(ids) - first_rows) / max(end - first, 1e-9)
    return len(ids) / (end - t), steady, ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--batches-per-block", type=int, default=4,
                    help="batches of --batch images per Ray Data block (= per actor task)")
    args = ap.parse_args()

    import ray
    import torch

    from model.visual_tokenizer import VQKD, VQKDConfig

    images = load_images(args.images, DEMO["image_resolution"])
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp(prefix="bench-vqkd-")
    VQKD(VQKDConfig(**DEMO)).save(tmp)  # speed does not depend on training
    print(f"{len(images)} images {DEMO['image_resolution']}px, patch {DEMO['patch_size']}, "
          f"dim {DEMO['dim']} x {DEMO['depth']} blocks, {DEMO['codebook_size']} codes; batch {args.batch}; "
          f"{os.cpu_count()} cores visible, torch default threads {torch.get_num_threads()}", flush=True)

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    variants = (("default threads", None), (f"{args.cpus} threads", args.cpus), ("1 thread", 1))
    # each loop is timed before and after the Ray run and its best kept: on a shared machine a
    # multi-threaded loop loses badly to any neighbour, and we do not want to win by that
    loops = {label: time_loop(tmp, images, args.batch, threads) for label, threads in variants}
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ray_total, ray_rate, ray_ids = time_ray(tmp, images, args.batch, args.cpus, args.batches_per_block)
    for label, threads in variants:
        loops[label] = max(loops[label], time_loop(tmp, images, args.batch, threads))
        print(f"loop ({label}, best of 2): {loops[label]:.1f} images/s", flush=True)
    print(f"ray actors ({args.cpus} x 1 CPU x 1 thread), incl. actor start: {ray_total:.1f} images/s", flush=True)
    print(f"ray actors ({args.cpus} x 1 CPU x 1 thread), steady state: {ray_rate:.1f} images/s", flush=True)
    # same ids as the loop, in order: the actors run the same tokenizer
    from pipelines.visual_tokenizer.encoder import load_local

    assert np.array_equal(np.asarray(ray_ids), load_local(tmp, args.batch)(images)), "ray ids differ from the loop"
    ray.shutdown()
    best = max(loops["default threads"], loops[f"{args.cpus} threads"])
    print(f"ray_over_loop_incl_actor_start: {ray_total / best:.2f}")
    print(f"ray_over_loop_1_thread: {ray_rate / loops['1 thread']:.2f}")
    print(f"ray_over_loop_bound: {args.cpus * loops['1 thread'] / best:.2f} ({args.cpus} x the 1-thread loop / "
          f"the best multi-thread loop: what perfect {args.cpus}-actor scaling would give)")
    print(f"ray_over_loop: {ray_rate / best:.2f}")


if __name__ == "__main__":
    main()
