"""The instruction-tuning ``TrainTask``: instruction shards + a pretrained model -> ``tasks.InstructModel``.

Streams are the instruction rows' modality groups (text, image_text, audio_text, triplet: see
``tasks.GROUPS``); every step takes rows of every group on every worker (each rank runs the same code path:
under ZeRO-3 a rank that skipped the vision adapter would hang the others), in proportion to the train rows.
Validation: answer-token loss and perplexity over the val split, and a few greedy answers beside their
references (``val/samples`` in the export, one JSON line each).
"""

from __future__ import annotations

import json
import os
from collections import Counter

from pipelines.train.task import TrainTask

MODEL_FILE, HEAD_FILE, INSTRUCT_FILE, SAMPLES_FILE = ("model.safetensors", "lm_head.safetensors", "instruct.json",
                                                      "val_samples.jsonl")
_COLUMNS = {"text": ["text_ids", "loss_mask", "causal_start"], "image": ["pixels"], "audio": ["fbank", "fbank_frames"]}


class InstructionsError(ValueError):
    """The inputs cannot be instruction-tuned together; the message says what to do."""


class InstructTask(TrainTask):
    """Args:
        cfg: the ``instruct`` stage config (``InstructConfig``).
        instructions: the instructions stage's ``Manifest``.
        pretrained: the pretrain stage's ``Manifest``.
    """

    def __init__(self, cfg, instructions, pretrained):
        self.cfg, self.instructions, self.pretrained = cfg, instructions, pretrained
        self.model_config: dict = {}
        self.sizes: dict[str, int] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.val_groups: list[str] = []
        self.samples: list[dict] = []
        self.thumbnails: list = []  # one PIL image per sample: its image, its log-mel, or blank (text only)

    # -- driver ----------------------------------------------------------------------------------------
    def check(self) -> None:
        """Schema version, vocabulary and length against the pretrained model, group counts, batch split."""
        import pyarrow.parquet as pq

        from model import ModelConfig
        from pipelines.data import schema
        from tasks import GROUPS, group_batch_sizes, group_of

        m, p = self.instructions, self.pretrained
        schema.check_instructions(m, "instruct")
        config = ModelConfig.from_dict(p.extra["model_config"])
        self.model_config = config.to_dict()
        if self.cfg.abstractor_queries:
            if config.vision.abstractor_queries not in (0, self.cfg.abstractor_queries):
                raise InstructionsError(f"instruct: the model of {p.stage!r} has a {config.vision.abstractor_queries}"
                                        f"-query abstractor; abstractor_queries {self.cfg.abstractor_queries} "
                                        "differs: leave it 0 to keep the pretrained one")
            self.model_config["vision"] = {**self.model_config["vision"],
                                           "abstractor_queries": self.cfg.abstractor_queries}
        vocab = m.extra["tokenizers"]["text"]["vocab_size"]
        if vocab != config.text.vocab_size:
            raise InstructionsError(f"instruct: {m.stage!r} was tokenized with a {vocab}-piece vocabulary, the model "
                                    f"of {p.stage!r} has {config.text.vocab_size}: use the pretraining's text tokenizer")
        trained_with = (p.extra.get("text_tokenizer") or {}).get("sha256")
        if trained_with and trained_with != m.extra["tokenizers"]["text"]["sha256"]:
            raise InstructionsError(f"instruct: {m.stage!r} and the pretraining of {p.stage!r} used different text "
                                    "tokenizers (sha256 differ): give the instructions stage the same text-tokenizer")
        room = config.text.max_positions - config.position_offset
        if m.extra["max_text_tokens"] > room:
            raise InstructionsError(f"instruct: {m.stage!r} keeps up to {m.extra['max_text_tokens']} tokens, the model "
                                    f"has {room} text positions: set its max_text_tokens to {room}")
        counts = {"train": Counter(), "val": Counter()}
        for f in m.files:
            split = f["path"].split("/", 1)[0]
            if split in counts and f["path"].endswith(".parquet"):
                with m.open(f["path"]) as fh:
                    for mods in pq.read_table(fh, columns=["modalities"]).column("modalities").to_pylist():
                        counts[split][group_of(mods) or "other"] += 1
        self.counts = {s: dict(c) for s, c in counts.items()}
        train = self.cfg.train
        available = {g for g in GROUPS if "text" in GROUPS[g] and counts["train"][g] >= train.num_workers}
        if not available:
            raise InstructionsError(f"instruct: no train conversations in {m.stage!r}: {self.counts['train']}")
        mix = {g: float(counts["train"][g]) for g in available}
        self.sizes = group_batch_sizes(mix, train.micro_batch_size, available)
        self.val_groups = [g for g in GROUPS if counts["val"][g] > 0 and "text" in GROUPS[g]]

    def datasets(self) -> dict:
        from pipelines.data.reader import read_split
        from tasks import GROUPS

        m = self.instructions

        def read(split, group):
            cols = sorted({c for mod in GROUPS[group] for c in _COLUMNS[mod]} | {"prompt", "answer"})
            return read_split(m, m.paths(".parquet", prefix=f"{split}/"), split, GROUPS[group], exact=True,
                              columns=cols)

        out = {f"train-{g}": read("train", g).materialize() for g in self.sizes}
        out.update({f"val-{g}": read("val", g).materialize() for g in self.val_groups})
        return out

    # -- worker ----------------------------------------------------------------------------------------
    def stream_batch_sizes(self) -> dict[str, int]:
        return dict(self.sizes)

    def _spec(self):
        from model import ModelConfig
        from tasks import BatchSpec

        mc = ModelConfig.from_dict(self.model_config)
        ids = self.instructions.extra["tokenizers"]["text"]["ids"]
        return BatchSpec.for_model(mc, self.instructions.extra["image_resolution"], ids)

    def build_model(self, train):
        import tempfile

        from safetensors.torch import load_file

        from model import ModelConfig, load_state_dict_strict
        from tasks.instruct import InstructModel

        mc = ModelConfig.from_dict({**self.model_config, "checkpoint_activations": train.activation_checkpointing})
        model = InstructModel(mc, self.cfg.trainable)
        p = self.pretrained
        with tempfile.TemporaryDirectory(prefix="omniway-instruct-") as tmp:
            for name in (MODEL_FILE, "heads.safetensors"):
                with p.open(name) as src, open(os.path.join(tmp, name), "wb") as dst:
                    dst.write(src.read())
            state = load_file(os.path.join(tmp, MODEL_FILE))
            heads = load_file(os.path.join(tmp, "heads.safetensors"))
        # an abstractor added here starts from its initialisation; every other weight is the pretrained one
        fresh = {k: v for k, v in model.backbone.state_dict().items()
                 if k.startswith("adapters.vision.abstractor.") and k not in state}
        load_state_dict_strict(model.backbone, {**state, **fresh})
        mlm = {k[len("mlm."):]: v for k, v in heads.items() if k.startswith("mlm.")}
        if mlm:  # the pretrained MLM head: the LM head starts from it (see tasks.instruct)
            model.lm.load_state_dict(mlm, strict=True)
        return model

    def collate(self, stream: str, batch: dict):
        import numpy as np
        import torch

        from tasks import Collator, get_recipe

        spec = self._spec()
        out = Collator(spec, get_recipe("omni")).collate(stream, batch)  # ids padded and cut, pixels, fbank
        L = out["text_ids"].shape[1]
        mask = np.zeros((len(batch["loss_mask"]), L), dtype=bool)
        for i, m in enumerate(batch["loss_mask"]):
            m = np.asarray(m, dtype=bool)[:L]
            mask[i, :len(m)] = m
        out["loss_mask"] = torch.from_numpy(mask)  # (B, L)
        out["causal_start"] = torch.from_numpy(np.asarray(batch["causal_start"], dtype=np.int64))  # (B,)
        return out

    def prepare(self, batch, *, step, rank, device, dtype):
        return {g: {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
                    for k, v in t.items()} for g, t in batch.items()}

    def batch_stats(self, batch, num_params: int) -> dict[str, float]:
        samples = tokens = 0.0
        mix = {}
        for g, t in batch.items():
            n = t["text_ids"].shape[0]
            seq = float((~t["text_padding_mask"]).sum())
            if "pixels" in t:
                seq += n * (1 + (t["pixels"].shape[-1] // self._spec().patch_size) ** 2)
            if "fbank" in t:
                seq += float((t["fbank_frames"] // self._spec().patch_frames + 1).sum())
            samples, tokens, mix[g] = samples + n, tokens + seq, float(n)
        return {"samples": samples, "tokens": tokens, "flops": 6.0 * num_params * tokens, **mix}

    def validate(self, module, streams, *, step, device, dtype) -> dict[str, float]:
        import math

        import torch

        loss_sum = count = 0.0
        self.samples, self.thumbnails = [], []
        per_group = -(-self.cfg.val_samples // max(1, len(streams)))  # answers from every group
        with torch.no_grad():
            for group, it in streams.items():
                answered = 0
                for t in it:
                    t = self.prepare({group: t}, step=step, rank=0, device=device, dtype=dtype)[group]
                    r = module.group_loss(group, t)
                    loss_sum += float(r["loss"]) * float(r["count"])
                    count += float(r["count"])
                    want = min(per_group - answered, self.cfg.val_samples - len(self.samples))
                    if want > 0:
                        rows = self._answers(module, group, t, want)
                        self.samples += rows
                        answered += len(rows)
        if not count:
            return {}
        loss = loss_sum / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "answer_tokens": count}

    def _answers(self, module, group: str, t: dict, n: int) -> list[dict]:
        """Greedy answers to the first ``n`` rows' prompts (the ids before their first answer token)."""
        from model.generation import generate

        ids = self._spec()
        rows = []
        for i in range(min(n, t["text_ids"].shape[0])):
            start = int(t["causal_start"][i])
            inputs = {k: v[i:i + 1] for k, v in t.items() if k in ("pixels", "fbank", "fbank_frames")}
            inputs["text_ids"] = t["text_ids"][i:i + 1, :start]
            room = module.backbone.config.text.max_positions - module.backbone.config.position_offset - start
            out = generate(module.backbone, module.logits, inputs, max_new_tokens=max(1, min(16, room)),
                           eos_id=ids.eos_id, pad_id=ids.pad_id)
            # only the first answer is generated: the reference is that answer, not every answer of the row
            answer = t["text_ids"][i, start:first_answer_stop(t["loss_mask"][i].tolist(), start)].tolist()
            rows.append({"group": group, "prompt": t["text_ids"][i, :start].tolist(),
                         "generated": out.tokens[0, :int(out.lengths[0])].tolist(), "reference": answer})
            self.thumbnails.append(_thumbnail(t, i))
        return rows

    def validation_tables(self) -> dict[str, dict[str, list]]:
        """The greedy answers of the last validation beside their prompts, media and references."""
        if not self.samples:
            return {}
        import sentencepiece as spm

        tok = self.instructions.extra["tokenizers"]["text"]
        if not tok.get("model"):
            return {}
        with self.instructions.open(tok["model"]) as f:
            sp = spm.SentencePieceProcessor(model_proto=f.read())
        eos = tok["ids"]["eos"]
        text = lambda ids: sp.decode([t for t in ids if t != eos])  # noqa: E731
        return {"val_answers": {"group": [r["group"] for r in self.samples],
                                "media": self.thumbnails[:len(self.samples)],
                                "prompt": [text(r["prompt"]) for r in self.samples],
                                "generated": [text(r["generated"]) for r in self.samples],
                                "reference": [text(r["reference"]) for r in self.samples]}}

    def export(self, module, out_dir: str) -> list[str]:
        from safetensors.torch import save_file

        from model import ModelConfig, save_checkpoint

        config = ModelConfig.from_dict(self.model_config)
        fresh = config.build()
        fresh.load_state_dict({k: v.detach().float().cpu() for k, v in module.backbone.state_dict().items()},
                              strict=True)
        save_checkpoint(os.path.join(out_dir, MODEL_FILE), fresh, config)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in module.lm.state_dict().items()},
                  os.path.join(out_dir, HEAD_FILE))
        with open(os.path.join(out_dir, INSTRUCT_FILE), "w") as f:
            json.dump({"model_config": self.model_config, "trainable": self.cfg.trainable,
                       "template": self.instructions.extra.get("template"), "stream_batch_sizes": self.sizes,
                       "tokenizer": self.instructions.extra["tokenizers"]["text"],
                       "image_resolution": self.instructions.extra["image_resolution"]}, f, indent=2, sort_keys=True)
        with open(os.path.join(out_dir, SAMPLES_FILE), "w") as f:
            for row in self.samples:
                f.write(json.dumps(row) + "\n")
        return [MODEL_FILE, HEAD_FILE, INSTRUCT_FILE, SAMPLES_FILE]


def first_answer_stop(loss_mask: list[bool], start: int) -> int:
    """End (exclusive) of the answer span that begins at ``start`` (a row's ``causal_start``): the run of
    supervised tokens from there, the answer and its eos."""
    stop = start
    while stop < len(loss_mask) and loss_mask[stop]:
        stop += 1
    return stop


def _thumbnail(t: dict, i: int):
    """Row ``i``'s media as a small PIL image for the validation table: the image (pixels (B, 3, S, S) in
    [-1, 1]), else the log-mel (fbank (B, T, M), per-utterance normalised; low mels at the bottom), else blank."""
    import numpy as np
    from PIL import Image

    if "pixels" in t:
        from model.pixels import to_uint8_pixels

        x = to_uint8_pixels(t["pixels"][i].float()).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(x)).resize((64, 64))
    if "fbank" in t:
        f = t["fbank"][i, :int(t["fbank_frames"][i])].float().cpu().numpy().T[::-1]  # (M, T)
        f = (255 * (f - f.min()) / max(float(f.max() - f.min()), 1e-6)).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(f)).resize((128, 64))
    return Image.new("RGB", (64, 64), (235, 235, 235))
