"""Stage kind `instruct`: a pretrained model + instruction shards -> an instruction-tuned model.

The second stage of mPLUG-Owl2's recipe on omniway's multiway model: the pretrained backbone and an LM head
(`tasks.instruct.InstructModel`), next-token loss on the answer tokens only, the prefix-LM mask; through the
one training loop (`pipelines.train`, ZeRO 0-3, resume, restarts, MLflow). Output: `model.safetensors`
(backbone), `lm_head.safetensors`, `instruct.json`, `val_samples.jsonl` (greedy answers beside their
references at the last validation; each validation also logs them to MLflow as a table with the media), `loss_curve.png`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines.registry import stage_kind
from pipelines.train.config import TrainConfig
from pipelines.typed import ConfigError


@dataclass
class InstructConfig:
    """Config of the `instruct` kind.

    Args:
        trainable: what trains: `all`; `language` (everything but the vision and audio adapters and their
            experts, as mPLUG-Owl2 freezes its vision encoder); `text` (only the text experts and the head).
        abstractor_queries: K > 0 adds mPLUG-Owl2's visual abstractor to the pretrained vision adapter (new
            weights, trained here, also under `language`): the text then sees K image tokens instead of N.
            0: as pretrained (a pretrained abstractor, if any, is kept).
        val_samples: greedy answers generated at each validation (written to `val_samples.jsonl`).
        train: the training loop's settings (`pipelines.train.TrainConfig`).
    """

    trainable: Literal["all", "language", "text"] = "language"
    abstractor_queries: int = 0
    val_samples: int = 5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-5, warmup_steps=3))


def resolve(cfg: InstructConfig, inputs: dict, where: str) -> tuple[InstructConfig, dict]:
    kinds = [s.uses for s in inputs.values()]
    for kind in ("pretrain", "instructions"):
        if kinds.count(kind) != 1:
            raise ConfigError(f"{where}: needs: exactly one `{kind}` stage (got {kinds.count(kind)})")
    if cfg.abstractor_queries < 0:
        raise ConfigError(f"{where}: with.abstractor_queries: must be >= 0, got {cfg.abstractor_queries}")
    model = next(s.facts for s in inputs.values() if s.uses == "pretrain")
    data = next(s.facts for s in inputs.values() if s.uses == "instructions")
    if data.get("max_text_tokens", 0) > model.get("max_text_tokens", 1 << 30):
        name = next(n for n, s in inputs.items() if s.uses == "instructions")
        raise ConfigError(f"{where}: needs: {name!r} keeps up to {data['max_text_tokens']} tokens, the pretrained "
                          f"model has {model['max_text_tokens']} text positions: set that stage's max_text_tokens "
                          f"to {model['max_text_tokens']} (or give it the pretrain stage as an input)")
    return cfg, {}


@stage_kind("instruct", config=InstructConfig, version="1", num_cpus=0, resolve=resolve,
            description="instruction tuning of a pretrained model: LM loss on the answers (Ray Train + DeepSpeed)")
def instruct(ctx) -> dict[str, float]:
    import json
    import os

    import sentencepiece as spm

    from pipelines.stages.instructions import TOKENIZER_FILE
    from pipelines.train.instruct_task import SAMPLES_FILE, InstructTask
    from pipelines.train.launch import fit_stage

    cfg = ctx.config
    data, pretrained = ctx.input("instructions"), ctx.input("pretrain")
    task = InstructTask(cfg, data, pretrained)
    result = fit_stage(ctx, task, cfg.train)
    # the generated answers as text, beside their references
    tok = data.extra["tokenizers"]["text"]
    files = list(result.files)
    if tok.get("model"):  # the instructions' copy of their tokenizer: generation decodes with it
        with data.open(tok["model"]) as f:
            spm_model = f.read()
        with open(os.path.join(ctx.output_dir, TOKENIZER_FILE), "wb") as f:
            f.write(spm_model)
        files.append(TOKENIZER_FILE)
        sp = spm.SentencePieceProcessor(model_proto=spm_model)
        path = os.path.join(ctx.output_dir, SAMPLES_FILE)
        rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
        for r in rows:
            r["generated_text"], r["reference_text"] = sp.decode(r["generated"]), sp.decode(r["reference"])
            r["prompt_text"] = sp.decode(r.get("prompt", []))
        with open(path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        for r in rows[:5]:
            print(f"[instruct] {r['group']}: {r['generated_text']!r}  (reference {r['reference_text']!r})",
                  flush=True)
    ctx.extra.update({"text_tokenizer": data.extra["tokenizers"]["text"],
                      "model_config": task.model_config, "trainable": cfg.trainable, "stream_batch_sizes": task.sizes,
                      "counts": task.counts, "files": files, "instructions": data.stage})
    metrics = {k: float(v) for k, v in result.metrics.items()
               if isinstance(v, (int, float)) and not k.startswith("memory/")}
    print(f"[instruct] {int(metrics.get('step', 0))} steps, loss {metrics.get('loss', float('nan')):.4f}, val "
          f"perplexity {metrics.get('val/perplexity', float('nan')):.2f}", flush=True)
    return metrics
