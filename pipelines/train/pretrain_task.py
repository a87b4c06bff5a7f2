"""The pretraining ``TrainTask``: shards -> per-group streams -> ``tasks.PretrainModel``.

Streams are the sample groups of ``tasks.GROUPS`` (text, image, audio, image_text, audio_text,
image_audio, triplet); each step takes ``stream_batch_sizes()[group]`` rows of each group on every worker,
in the recipe's mix proportions (groups the shards lack, or have too few rows for, are dropped and
reported). Validation runs every val group whole on every rank: MLM / MIM accuracy, retrieval R@1/R@5
both ways for image-text, audio-text and image-audio over every val sample holding both modalities, and
with the recipe's matching task the matching accuracy (``match_acc``: pairs and their hard negatives,
binary; ``triplet_match_acc``: OPT's five match states of triplets).

With the recipe's ``augment`` on, training images are augmented in ``collate_train`` (Ray Data's prefetch
threads of each worker), each sample from (seed, epoch, rank, sample id); with visual tokens as the MIM
target the frozen visual tokenizer (the visual-tokenizer stage's output, an input of the stage then) runs
on the augmented views there too, so the targets describe what the model sees. Validation never augments.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter

from pipelines.train.task import TrainTask

_TOKENIZER_LOCK = threading.Lock()  # the prefetch threads of several streams may ask for it at once

# the stage output's files (PretrainTask.export writes them, `omniway export` reads them)
MODEL_FILE, HEADS_FILE, PRETRAIN_FILE = "model.safetensors", "heads.safetensors", "pretrain.json"
_COLUMNS = {"text": ["text_ids"], "image": ["pixels", "image_tokens"], "audio": ["fbank", "fbank_frames"]}
_PAIRS = (("image", "text"), ("audio", "text"), ("image", "audio"))
# validation accuracies `<kind>_acc` from the `<kind>_correct` / `<kind>_count` of `PretrainModel.evaluate`
_ACCURACIES = ("mlm", "mim", "match", "triplet_match")
DEFAULT_CODEBOOK = 8192  # MIM head width when nothing names a codebook (BEiT v2's tokenizer)


class ShardsError(ValueError):
    """The shards input cannot be trained on; the message says what to do."""


class PretrainTask(TrainTask):
    """Args:
        cfg: the ``pretrain`` stage config (``PretrainConfig``).
        shards: the shards stage's ``Manifest``.
        visual: the visual-tokenizer stage's ``Manifest`` (needed when augmented images take visual-token
            MIM targets: the tokens of each view are computed in the worker).
    """

    def __init__(self, cfg, shards, visual=None):
        self.cfg, self.shards, self.visual = cfg, shards, visual
        self.retokenize = False
        self._visual_encoder = None
        self.sizes: dict[str, int] = {}
        self.val_groups: list[str] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.dropped: dict[str, str] = {}
        self.row_bytes: dict[str, float] = {}
        self.model_config: dict = {}
        self.mim_target = cfg.mim_target
        self.codebook_size = cfg.codebook_size or DEFAULT_CODEBOOK
        self._collator = None
        self._recipe = None

    # -- driver ----------------------------------------------------------------------------------------
    def recipe(self):
        """The ``tasks.Recipe`` of the config (checked as at load time: an unknown key is named)."""
        if self._recipe is None:
            from pipelines.stages.pretrain import check_recipe

            self._recipe = check_recipe(self.cfg.recipe, self.cfg.recipe_overrides, "pretrain")
        return self._recipe

    def check(self) -> None:
        """Schema version, every shard file present, group counts, batch split, model config."""
        import pyarrow.parquet as pq

        from model import ModelConfig
        from pipelines.data.schema import check_shards
        from tasks import GROUPS, group_batch_sizes, group_of

        m = self.shards
        check_shards(m)  # UnknownSchemaVersion, naming the version and what to do
        files = [e["path"] for e in m.files if e["path"].endswith(".parquet")]
        missing = []
        for rel in files:
            try:
                with m.open(rel):
                    pass
            except (FileNotFoundError, OSError):
                missing.append(rel)
        if missing:
            raise ShardsError(f"pretrain: {len(missing)} shard file(s) listed in the manifest of stage "
                              f"{m.stage!r} are missing under {m.dir}: {missing[:5]}; rerun that stage "
                              f"(omniway run PIPELINE --only {m.stage} --force)")
        counts = {"train": Counter(), "val": Counter()}
        column_bytes, modality_rows = Counter(), Counter()  # train split: for the in-memory estimate
        has_codes = False
        for rel in files:
            split = rel.split("/", 1)[0]
            if split not in counts:
                continue
            with m.open(rel) as f:
                parquet = pq.ParquetFile(f)
                table = parquet.read(columns=["modalities", "image_tokens"])
                meta = parquet.metadata
            for mods in table.column("modalities").to_pylist():
                counts[split][group_of(mods) or "other"] += 1
                if split == "train":
                    modality_rows.update(mods)
            if split == "train":
                for rg in range(meta.num_row_groups):
                    for i in range(meta.num_columns):
                        col = meta.row_group(rg).column(i)
                        column_bytes[col.path_in_schema.split(".", 1)[0]] += col.total_uncompressed_size
            has_codes = has_codes or table.column("image_tokens").null_count < table.num_rows
        self.counts = {s: dict(c) for s, c in counts.items()}
        # bytes per row of each modality's columns, averaged over the train rows that have the modality
        self.row_bytes = {mod: sum(column_bytes[c] for c in cols) / max(1, modality_rows[mod])
                          for mod, cols in _COLUMNS.items()}

        recipe = self.recipe()
        train = self.cfg.train
        available = {g for g in GROUPS if counts["train"][g] > 0}
        while True:  # drop groups too small to give every worker a batch, then re-split
            sizes = group_batch_sizes(recipe.mix, train.micro_batch_size, available)
            small = {g for g, b in sizes.items() if counts["train"][g] < b * train.num_workers}
            if not small:
                break
            for g in small:
                self.dropped[g] = (f"{counts['train'][g]} train rows < {train.num_workers} workers x "
                                   f"{sizes[g]} per batch")
            available -= small
            if not available:
                raise ShardsError(f"pretrain: no sample group of the mix {recipe.mix} has enough train rows "
                                  f"for {train.num_workers} workers x micro_batch_size "
                                  f"{train.micro_batch_size}: {self.dropped}")
        self.sizes = sizes
        for g in recipe.mix:
            if g not in available and g not in self.dropped:
                self.dropped[g] = "no train rows"
        self.val_groups = [g for g in GROUPS if counts["val"][g] > 0 and (g in sizes or len(GROUPS[g]) > 1)]

        if self.mim_target == "auto":
            self.mim_target = "tokens" if has_codes else "pixels"
        if self.mim_target == "tokens" and recipe.uses("mim") and not has_codes:
            raise ShardsError("pretrain: mim_target 'tokens' needs visual tokens in the shards (give the shards "
                              "stage a visual-tokenizer input) or set mim_target: pixels")
        self.retokenize = recipe.augment.enabled and self.mim_target == "tokens" and recipe.uses("mim")
        # what the shards fix, from their manifest (the pipeline loader filled the same values into the
        # config from the upstream configs; a stage run on its own, by a test or a script, gets them here)
        overrides = dict(self.cfg.model)
        image_size = (self.cfg.image_size or (overrides.get("vision") or {}).get("img_size")
                      or int(m.extra.get("image_resolution") or 0) or None)
        if image_size:
            overrides["vision"] = {**overrides.get("vision", {}), "img_size": image_size}
        tok = (m.extra.get("tokenizers") or {}).get("text") or {}
        if tok.get("vocab_size"):
            overrides.setdefault("text", {})
            overrides["text"] = {**overrides["text"], "vocab_size": int(tok["vocab_size"])}
        config = ModelConfig.from_overrides(self.cfg.size, overrides, "pretrain: with.model")
        visual = (m.extra.get("tokenizers") or {}).get("visual") or {}
        self.codebook_size = self.cfg.codebook_size or visual.get("codebook_size") or DEFAULT_CODEBOOK
        if self.mim_target == "tokens" and visual.get("patch_size"):
            grid = (visual["image_resolution"] // visual["patch_size"]) ** 2
            if (config.vision.num_patches, self.codebook_size) != (grid, visual["codebook_size"]):
                raise ShardsError(
                    f"pretrain: the model's {config.vision.num_patches} patches and {self.codebook_size} codes do "
                    f"not match the visual tokens of stage {m.stage!r} ({grid} per image from a "
                    f"{visual['codebook_size']}-code tokenizer at {visual['image_resolution']} px / patch "
                    f"{visual['patch_size']}); leave image_size, model.vision.patch_size and codebook_size unset")
        self.model_config = config.to_dict()
        if self.retokenize:
            self._check_visual_tokenizer()

    def _check_visual_tokenizer(self) -> None:
        """Augmented views take their MIM targets from the tokenizer the shards' tokens came from."""
        if self.visual is None:
            raise ShardsError("pretrain: recipe augmentation with visual-token MIM targets tokenizes each augmented "
                              "view in the worker: add the visual-tokenizer stage the shards used to this stage's "
                              "needs, or set mim_target: pixels, or recipe_overrides.augment.enabled: false")
        from model import ModelConfig
        from pipelines.stages.visual_tokenizer import manifest_facts

        recorded = (self.shards.extra.get("tokenizers") or {}).get("visual") or {}
        if recorded.get("fingerprint") and recorded["fingerprint"] != self.visual.fingerprint:
            raise ShardsError(f"pretrain: visual tokenizer input {self.visual.stage!r} is not the one the shards of "
                              f"stage {self.shards.stage!r} were tokenized with (stage {recorded.get('stage')!r}): "
                              "give this stage the same visual-tokenizer stage as the shards")
        facts = manifest_facts(self.visual)
        vision = ModelConfig.from_dict(self.model_config).vision
        if (vision.img_size, vision.patch_size, self.codebook_size) != (
                facts["image_resolution"], facts["patch_size"], facts["codebook_size"]):
            raise ShardsError(f"pretrain: visual tokenizer {self.visual.stage!r} ({facts['image_resolution']} px, "
                              f"patch {facts['patch_size']}, {facts['codebook_size']} codes) does not fit the model "
                              f"({vision.img_size} px, patch {vision.patch_size}, {self.codebook_size} codes)")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_visual_encoder"] = None  # loaded in each worker, never shipped
        return state

    def datasets(self) -> dict:
        from pipelines.data.reader import read_shards
        from tasks import GROUPS

        augment = self.recipe().augment.enabled

        def cols(g):
            extra = {"sample_id"} if augment and "image" in GROUPS[g] else set()  # the augmentation's key
            return sorted({c for mod in GROUPS[g] for c in _COLUMNS[mod]} | extra)

        out = {}
        for g in self.sizes:
            ds = read_shards(self.shards, "train", GROUPS[g], exact=True, columns=cols(g))
            if g in self.in_memory:
                ds = ds.materialize()
            out[f"train-{g}"] = ds
        # val is small and read whole by every worker at every validation: read it once, here
        out.update({f"val-{g}": read_shards(self.shards, "val", GROUPS[g], exact=True, columns=cols(g)).materialize()
                    for g in self.val_groups})
        return out

    @property
    def in_memory(self) -> list[str]:
        """Train groups read once into the object store (``in_memory_mb``): each epoch of a streamed group
        re-reads and re-filters every train file, and a small group (17 image-only rows among 14k) ends an
        epoch every few steps, so the trainer would mostly wait for data."""
        return [g for g in self.sizes if self.group_bytes(g) <= self.cfg.in_memory_mb * 2**20]

    def group_bytes(self, group: str) -> float:
        """Estimated uncompressed bytes of a train group's columns (``check`` measures them)."""
        from tasks import GROUPS

        return self.counts["train"].get(group, 0) * sum(self.row_bytes[m] for m in GROUPS[group])

    # -- worker ----------------------------------------------------------------------------------------
    @property
    def collator(self):
        if self._collator is None:
            from model import ModelConfig
            from tasks import BatchSpec, Collator

            mc = ModelConfig.from_dict(self.model_config)
            ids = ((self.shards.extra.get("tokenizers") or {}).get("text") or {}).get("ids") or {}
            spec = BatchSpec.for_model(mc, self.shards.extra.get("image_resolution", mc.vision.img_size), ids,
                                       self.cfg.max_audio_frames)
            self._collator = Collator(spec, self.recipe())
        return self._collator

    def stream_batch_sizes(self) -> dict[str, int]:
        return dict(self.sizes)

    def build_model(self, train):
        from model import ModelConfig
        from tasks import PretrainModel

        mc = ModelConfig.from_dict({**self.model_config, "checkpoint_activations": train.activation_checkpointing})
        return PretrainModel(mc, self.recipe(), mim_target=self.mim_target, codebook_size=self.codebook_size,
                             embed_dim=self.cfg.embed_dim, mask_id=self.collator.spec.mask_id)

    def collate(self, stream: str, batch: dict):
        return self.collator.collate(stream, batch)

    def collate_train(self, stream: str, batch: dict, epoch: int):
        """A training batch of ``epoch``: images augmented when the recipe says so (per sample from
        (seed, epoch, rank, sample id)), and their visual tokens computed on the augmented views."""
        from tasks import GROUPS
        from tasks.augment import sample_seeds
        from tasks.losses import world

        if not (self.recipe().augment.enabled and "image" in GROUPS[stream]):
            return self.collator.collate(stream, batch)
        seeds = sample_seeds(self.cfg.train.seed, epoch, world()[0], batch["sample_id"])
        out = self.collator.collate(stream, batch, seeds)
        if self.retokenize:
            out["image_tokens"] = self.visual_encoder().model.tokenize(out["pixels"])  # (B, N) int64
        return out

    def visual_encoder(self):
        """The frozen visual tokenizer (``pipelines.visual_tokenizer.encoder.TokenEncoder``), loaded once per
        worker process from the visual-tokenizer input."""
        with _TOKENIZER_LOCK:
            if self._visual_encoder is None:
                from pipelines.visual_tokenizer.encoder import load_encoder

                self._visual_encoder = load_encoder(self.visual)
            return self._visual_encoder

    def _generator(self, *key: int):
        import torch

        return torch.Generator().manual_seed(hash((self.cfg.train.seed, *key)) & ((1 << 62) - 1))

    @staticmethod
    def _to(t: dict, device, dtype) -> dict:
        return {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)) for k, v in t.items()}

    def prepare(self, batch, *, step, rank, device, dtype):
        g = self._generator(step, rank)
        shared = self._generator(step, -2)  # the same on every rank: which passes run (``add_masks``)
        return {name: self._to(self.collator.add_masks(name, t, g, shared), device, dtype)
                for name, t in batch.items()}

    def batch_stats(self, batch, num_params: int) -> dict[str, float]:
        from tasks import GROUPS

        recipe = self.recipe()
        samples = tokens = flops = 0.0
        mix = {}
        for g, t in batch.items():
            n = 0
            per_mod = {}
            if "text_ids" in t:
                per_mod["text"] = float((~t["text_padding_mask"]).sum())
            if "pixels" in t:
                per_mod["image"] = float(t["pixels"].shape[0] * (1 + (t["pixels"].shape[-1] // self.collator.spec.patch_size) ** 2))
            if "fbank" in t:
                per_mod["audio"] = float((t["fbank_frames"] // self.collator.spec.patch_frames + 1).sum())
            n = t[next(iter(t))].shape[0]
            joint = sum(per_mod.values())
            samples += n
            tokens += joint
            mix[g] = float(n)
            # 6 N T per trained pass (fwd + bwd), 2 N T per no-grad pass; attention FLOPs left out
            mdm = any(recipe.uses(o) for o in ("mlm", "mim", "mam"))
            if mdm or recipe.uses("denoise"):
                flops += 6 * num_params * joint
            if recipe.uses("denoise"):
                flops += 2 * num_params * joint
            if recipe.uses("contrast") and len(GROUPS[g]) > 1:
                flops += 6 * num_params * joint
            if recipe.uses("modality") and "text" in GROUPS[g] and len(GROUPS[g]) > 1:
                share = min(n, max(1, round(recipe.modality_prob * n))) / n  # the rows reconstructed
                flops += 6 * num_params * joint * share
            if recipe.uses("match") and len(GROUPS[g]) == 2:  # 3 fused sequences per pair (+ similarity)
                flops += 6 * num_params * 3 * joint + (0 if recipe.uses("contrast") else 2 * num_params * joint)
            if recipe.uses("match") and len(GROUPS[g]) == 3 and n >= 3:
                flops += 6 * num_params * joint
        return {"samples": samples, "tokens": tokens, "flops": flops, **mix}

    def validate(self, module, streams, *, step, device, dtype) -> dict[str, float]:
        import torch

        from tasks import GROUPS, retrieval_metrics
        from tasks.metrics import content_labels

        emb: dict[tuple, dict[str, list]] = {p: {} for p in _PAIRS}
        text_keys: dict[tuple, list] = {p: [] for p in _PAIRS}  # the caption of each pair, for duplicates
        counts = Counter()
        for group, it in streams.items():
            mods = GROUPS[group]
            for i, t in enumerate(it):
                t = self._to(self.collator.add_masks(group, t, self._generator(-1, i)), device, dtype)
                out = module.evaluate(group, t)
                for kind in _ACCURACIES:
                    for k in (f"{kind}_correct", f"{kind}_count"):
                        if k in out:
                            counts[k] += float(out[k])
                for pair in _PAIRS:
                    if all(m in mods for m in pair):
                        for m in pair:
                            emb[pair].setdefault(m, []).append(out[f"emb/{m}"].cpu())
                        if "text" in pair:
                            ids, pad = t["text_ids"].cpu(), t["text_padding_mask"].cpu()
                            text_keys[pair] += [tuple(row[~padded].tolist()) for row, padded in zip(ids, pad)]
        metrics: dict[str, float] = {}
        for kind in _ACCURACIES:
            if counts[f"{kind}_count"]:
                metrics[f"{kind}_acc"] = counts[f"{kind}_correct"] / counts[f"{kind}_count"]
        for pair, per_mod in emb.items():
            if len(per_mod) == 2:
                labels = {pair: content_labels(text_keys[pair])} if text_keys[pair] else None
                metrics.update(retrieval_metrics({m: torch.cat(v) for m, v in per_mod.items()}, [pair],
                                                 labels=labels))
        return metrics

    def export(self, module, out_dir: str) -> list[str]:
        from safetensors.torch import save_file

        from model import ModelConfig, save_checkpoint

        config = ModelConfig.from_dict(self.model_config)
        fresh = config.build()  # an fp32 module of the exported config
        state = {k: v.detach().float().cpu() for k, v in module.backbone.state_dict().items()}
        fresh.load_state_dict(state, strict=True)
        save_checkpoint(os.path.join(out_dir, MODEL_FILE), fresh, config)
        heads = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()
                 if not k.startswith("backbone.")}
        save_file(heads, os.path.join(out_dir, HEADS_FILE))
        with open(os.path.join(out_dir, PRETRAIN_FILE), "w") as f:
            json.dump({"model_config": self.model_config, "recipe": self.cfg.recipe,
                       "recipe_overrides": self.cfg.recipe_overrides, "mim_target": self.mim_target,
                       "stream_batch_sizes": self.sizes}, f, indent=2, sort_keys=True)
        return [MODEL_FILE, HEADS_FILE, PRETRAIN_FILE]
