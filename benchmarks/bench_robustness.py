"""Does training-image augmentation make the demo model see digits rather than pixel positions?

Same run, same data, same steps:

  plain      the demo's pretrain stage (pipelines/configs/demo.yaml: debug size, its recipe and overrides,
             visual-token MIM targets from the shards), augmentation off
  augmented  the same with the recipe's augmentation on (``tasks.recipes.ImageAugment``: random resized
             crop, horizontal flip, colour jitter; ``--crop-scale`` and ``--hflip`` override the preset),
             the visual-tokenizer stage as the extra input that tokenizes each augmented view in the workers

Both train on the demo's own upstream outputs (corpus, text and visual tokenizers, shards), built by
``omniway run pipelines/configs/demo.yaml --to shards`` in the default workdir when not cached, so a
``make demo`` before or after shares them. Then zero-shot classification of the val digits against the
prompts "a handwritten digit N" (the demo's evaluate suite: class embedding = the prompt's text embedding,
prediction = the most similar class), on the clean images and on copies transformed here with Pillow:

  shifted    translated by (10, 8) px, the uncovered border filled with the background colour
  scaled     the whole image shrunk to 80 of its 112 px, centred on the background
  blurred    Gaussian blur, radius 4
  thickened  strokes grown by a 5-pixel max filter (min filter where strokes are darker than the ground)
  thinned    strokes shrunk by a 5-pixel min filter (max filter likewise)

Also the mean step time of each run (from the per-window ``step_time_s`` the loop logs, the first 20
steps left out) and the data-wait share. Targets: every transformed accuracy >= 40% with augmentation,
clean accuracy no more than 3 points below the plain run's, step time augmented / plain <= 1.25.

Last line: ``augmented_worst_over_plain_worst: <worst transformed accuracy with augmentation / without>``.

    python benchmarks/bench_robustness.py [--steps 300] [--crop-scale 0.08 1.0] [--hflip 0.5] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ["PYTHONPATH"] = os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
DEMO = os.path.join(REPO, "pipelines", "configs", "demo.yaml")
TRANSFORMS = ("shifted", "scaled", "blurred", "thickened", "thinned")
SKIP_STEPS = 20  # Ray Data start-up and DeepSpeed's first steps


# -- the transforms -------------------------------------------------------------------------------------
def _background(img) -> tuple[int, ...]:
    """The ground colour: the median of the border pixels."""
    a = np.asarray(img)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # (4R, 3)
    return tuple(int(v) for v in np.median(border, axis=0))


def transform(pixels: np.ndarray, kind: str) -> np.ndarray:
    """uint8 (3, R, R) -> the same, transformed (see the module docs)."""
    from PIL import Image, ImageFilter

    img = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    R = img.size[0]
    ground = _background(img)
    dark_strokes = np.mean(ground) > 127  # strokes darker than the ground: max / min swap roles
    if kind == "shifted":
        out = Image.new("RGB", img.size, ground)
        out.paste(img, (10, 8))
    elif kind == "scaled":
        size = round(R * 80 / 112)
        out = Image.new("RGB", img.size, ground)
        out.paste(img.resize((size, size), Image.BILINEAR), ((R - size) // 2, (R - size) // 2))
    elif kind == "blurred":
        out = img.filter(ImageFilter.GaussianBlur(4))
    elif kind == "thickened":
        out = img.filter(ImageFilter.MinFilter(5) if dark_strokes else ImageFilter.MaxFilter(5))
    elif kind == "thinned":
        out = img.filter(ImageFilter.MaxFilter(5) if dark_strokes else ImageFilter.MinFilter(5))
    else:
        raise ValueError(kind)
    return np.asarray(out).transpose(2, 0, 1).copy()


# -- data and models ------------------------------------------------------------------------------------
def upstream(workdir: str):
    """The demo spec and its shards, visual-tokenizer and text-tokenizer outputs (built when missing)."""
    from pipelines.config import load_pipeline
    from pipelines.runner import current_outputs

    spec = load_pipeline(DEMO, workdir=workdir)
    wanted = ("shards", "visual-tokenizer", "text-tokenizer")
    outputs = dict(current_outputs(spec, wanted))
    if any(outputs[n] is None for n in wanted):
        print("[bench] building the demo's upstream stages (omniway run ... --to shards)", flush=True)
        omniway = os.path.join(os.path.dirname(sys.executable), "omniway")  # the package's console script
        subprocess.run([omniway, "run", DEMO, "--to", "shards", "--workdir", workdir], check=True, cwd=REPO)
        outputs = dict(current_outputs(spec, wanted))
    return spec, outputs


def pretrain(spec, shards, visual, root: str, name: str, steps: int, augment: dict | None):
    """One pretrain stage run of the demo's config -> (output Manifest, tracking uri, run id)."""
    import pipelines.stages  # noqa: F401 - registers the kinds
    from mlflow.tracking import MlflowClient

    from pipelines.execute import execute_stage
    from pipelines.manifest import Manifest
    from pipelines.storage import Storage
    from pipelines.typed import to_dict

    cfg = spec.stages["pretrain"].config
    train = dataclasses.replace(cfg.train, steps=steps, checkpoint_every=steps, val_every=0,
                                warmup_steps=min(cfg.train.warmup_steps, max(1, steps // 10)))
    overrides = dict(cfg.recipe_overrides)
    if augment is not None:
        overrides["augment"] = augment
    cfg = dataclasses.replace(cfg, train=train, recipe_overrides=overrides)
    inputs = {"shards": shards, **({"visual-tokenizer": visual} if augment else {})}
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench") or client.create_experiment("bench")
    run_id = client.create_run(exp if isinstance(exp, str) else exp.experiment_id).info.run_id
    storage = Storage(os.path.join(root, "store"))
    data = execute_stage(pipeline="bench", stage=name, kind="pretrain", key="k", config=cfg,
                         config_dict=to_dict(cfg), inputs=inputs, storage=storage, run_id=run_id, tracking_uri=uri)
    return Manifest(dir=storage.output_dir("bench", name, "k"), data=data, storage_uri=storage.root), uri, run_id


def timing(uri: str, run_id: str) -> tuple[float, float]:
    """(mean step time s, mean data-wait share) over the logged windows past SKIP_STEPS."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    step = [m.value for m in client.get_metric_history(run_id, "step_time_s") if m.step > SKIP_STEPS]
    wait = [m.value for m in client.get_metric_history(run_id, "data_wait_share") if m.step > SKIP_STEPS]
    return float(np.mean(step)), float(np.mean(wait))


def val_digits(shards) -> tuple[list[np.ndarray], list[int]]:
    """uint8 (3, R, R) pixels and labels of every val digit with an image."""
    import pyarrow.parquet as pq

    R = int(shards.extra["image_resolution"])
    images, labels = [], []
    for path in shards.paths(".parquet", prefix="val/"):
        rows = pq.read_table(path, columns=["sample_id", "modalities", "pixels", "label"]).to_pylist()
        for r in rows:
            if r["sample_id"].startswith("digits/") and "image" in r["modalities"] and r["label"] is not None:
                images.append(np.frombuffer(r["pixels"], np.uint8).reshape(3, R, R))
                labels.append(int(r["label"]))
    if not images:
        raise SystemExit("no val digits in the shards")
    return images, labels


class ZeroShot:
    """A pretrained output as the evaluate stage embeds it (``EmbeddingModel``), the demo's prompts."""

    def __init__(self, model_manifest, shards, text_tokenizer):
        import torch

        from model import ModelConfig
        from pipelines.data.featurize import Featurizer
        from pipelines.evaluation.models import EmbeddingModel
        from pipelines.stages.shards import ShardsConfig
        from tasks import BatchSpec, Collator, get_recipe
        from tasks.zero_shot import build_zero_shot_classifier

        self.model = EmbeddingModel({"kind": "pretrain", "manifest": model_manifest})
        mc = ModelConfig.from_dict(model_manifest.extra["model_config"])
        ids = shards.extra["tokenizers"]["text"]["ids"]
        self.collator = Collator(BatchSpec.for_model(mc, shards.extra["image_resolution"], ids), get_recipe("beit3"))
        self.names = list(shards.extra["label_names"]["digits"])
        info = text_tokenizer.extra["tokenizer"]
        with text_tokenizer.open(info["model"]) as f:
            feat = Featurizer(f.read(), ShardsConfig(max_text_tokens=int(shards.extra.get("max_text_tokens", 256))))

        def encode_text(prompts):
            col = np.empty(len(prompts), dtype=object)
            col[:] = [np.asarray(t, np.int64) for t in feat.text_ids(prompts)]
            return self.model.embed(self.collator.collate("text", {"text_ids": col}), "text")

        with torch.inference_mode():
            self.classifier = build_zero_shot_classifier(encode_text, self.names, ["a handwritten digit {}"])

    def accuracy(self, images: list[np.ndarray], labels: list[int]) -> float:
        import torch

        from tasks.zero_shot import zero_shot_logits

        preds = []
        for i in range(0, len(images), 64):
            col = np.empty(len(images[i:i + 64]), dtype=object)
            col[:] = [im.tobytes() for im in images[i:i + 64]]
            feats = self.model.embed(self.collator.collate("image", {"pixels": col}), "image")
            preds += zero_shot_logits(feats, self.classifier).argmax(1).tolist()
        return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=0, help="pretrain steps of each run (default: the demo's)")
    p.add_argument("--crop-scale", type=float, nargs=2, default=None, help="augment.crop_scale (default: preset)")
    p.add_argument("--hflip", type=float, default=None, help="augment.hflip (default: preset)")
    p.add_argument("--workdir", default=os.path.join(REPO, ".omniway"), help="the demo's workdir (its cache)")
    p.add_argument("--out", default=None, help="where the two pretrain runs go (default: a temporary dir)")
    args = p.parse_args()

    spec, outs = upstream(args.workdir)
    steps = args.steps or spec.stages["pretrain"].config.train.steps
    augment = {"enabled": True}
    if args.crop_scale:
        augment["crop_scale"] = list(args.crop_scale)
    if args.hflip is not None:
        augment["hflip"] = args.hflip
    root = args.out or tempfile.mkdtemp(prefix="omniway-bench-robustness-")
    images, labels = val_digits(outs["shards"])
    sets = {"clean": images, **{k: [transform(im, k) for im in images] for k in TRANSFORMS}}
    print(f"[bench] {len(images)} val digits; {steps} steps per run; augmentation {augment}; runs under {root}",
          flush=True)

    results = {}
    for name, aug in (("plain", None), ("augmented", augment)):
        manifest, uri, run_id = pretrain(spec, outs["shards"], outs["visual-tokenizer"], root, name, steps, aug)
        zs = ZeroShot(manifest, outs["shards"], outs["text-tokenizer"])
        acc = {k: zs.accuracy(v, labels) for k, v in sets.items()}
        step_s, wait = timing(uri, run_id)
        results[name] = {"acc": acc, "step_s": step_s, "wait": wait, "loss": manifest.data["metrics"].get("loss")}
        print(f"[bench] {name}: final loss {results[name]['loss']:.3f}, step {step_s:.3f}s, data wait {wait:.3f}",
              flush=True)

    print(f"\n{'images':<11} {'plain':>7} {'augmented':>10}   (zero-shot acc1, chance {1 / 10:.0%}; "
          f"{len(images)} images)")
    for k in sets:
        print(f"{k:<11} {results['plain']['acc'][k]:>7.1%} {results['augmented']['acc'][k]:>10.1%}")
    plain_worst = min(results["plain"]["acc"][k] for k in TRANSFORMS)
    aug_worst = min(results["augmented"]["acc"][k] for k in TRANSFORMS)
    clean_drop = results["plain"]["acc"]["clean"] - results["augmented"]["acc"]["clean"]
    ratio = results["augmented"]["step_s"] / results["plain"]["step_s"]
    print(f"\nstep time: plain {results['plain']['step_s']:.3f}s, augmented {results['augmented']['step_s']:.3f}s "
          f"(augmented / plain {ratio:.2f}, target <= 1.25); data wait share {results['plain']['wait']:.3f} / "
          f"{results['augmented']['wait']:.3f}")
    print(f"worst transformed: plain {plain_worst:.1%}, augmented {aug_worst:.1%} (target >= 40%); clean accuracy "
          f"augmented {clean_drop * 100:+.1f} points below plain (target <= 3)")
    print(f"step_time_augmented_over_plain: {ratio:.3f}")
    print(f"augmented_worst_over_plain_worst: {aug_worst / max(plain_worst, 1e-9):.3f}")


if __name__ == "__main__":
    main()
