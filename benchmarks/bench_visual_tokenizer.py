"""Images/s tokenized by the VQ-KD visual tokenizer: Ray Data actors on 2 CPUs vs a plain loop.

Same images (tuxpaint stamps decoded to 224 px, the demo resolution), same weights, same run:

  loop (default threads)   one process, torch's default intra-op threads (= cores here)
  loop (2 threads)         one process, torch.set_num_threads(2): the same total threads as Ray
  loop (1 thread)          for reference
  ray actors               Ray Data map_batches over 2 actors x 1 CPU x 1 torch thread, weights loaded
                           once per actor (pipelines.visual_tokenizer.encoder, as the shards stage does)

Ray is reported twice: from submission (actor start and weight loading included) and in steady state
(from the first output batch on, which is what a long shards run sees; the loops are warmed up too).
Last line: `ray_over_loop: <steady-state ray images/s / best of the two multi-thread loops>`.

    python benchmarks/bench_visual_tokenizer.py [--images 768] [--batch 32]
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
        return {"ids": self.encoder(batch["pixels"])}


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


def time_ray(directory: str, images: np.ndarray, batch: int, workers: int) -> tuple[float, float, np.ndarray]:
    """(images/s including actor start, images/s once the first batch is out, ids in input order)."""
    import ray

    # one block per batch: a single big block would feed only one actor
    blocks = [images[i:i + batch] for i in range(0, len(images), batch)]
    ds = ray.data.from_numpy(blocks).rename_columns({"data": "pixels"})
    ds = ds.map_batches(TokenizeActor, fn_constructor_args=(directory, batch), batch_size=batch,
                        batch_format="numpy", num_cpus=1, concurrency=workers)
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
    ray_total, ray_rate, ray_ids = time_ray(tmp, images, args.batch, args.cpus)
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
    print(f"ray_over_loop: {ray_rate / best:.2f}")


if __name__ == "__main__":
    main()
