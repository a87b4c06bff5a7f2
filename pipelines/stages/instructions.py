"""Stage kind `instructions`: conversations and task prompts over the corpus -> instruction shards.

    sources (LLaVA JSON, messages JSONL, easy-vqa)  --+
    corpus rows --OFA-style task templates-----------+--> Ray tasks (pipelines.data.instruction_rows):
        turns and placeholders checked, media validated by the corpus stage's code and featurized as the
        shards stage does, the chat template (tasks.chat) formatting, tokenizing and masking in one pass
    --> stage process: train / val / rejects Parquet parts (schema: pipelines.data.schema)
Accounting: read = accepted + rejected, checked before anything commits.

What the inputs fix is taken from them: the image resolution from the visual tokenizer (else the
pretraining model's image size, else 224), the token bound from the pretraining model's text positions.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Optional

from pipelines.registry import stage_kind
from pipelines.stages.corpus import AudioLimits, ImageLimits
from pipelines.typed import ConfigError
from tasks.chat import ChatTemplate

DEFAULT_RESOLUTION, DEFAULT_MAX_TOKENS = 224, 256
TOKENIZER_FILE = "text.model"  # a copy of the text tokenizer, beside the rows it tokenized


@dataclass
class ConversationSource:
    """One file (or package) of conversations.

    Args:
        name: the source's name, the prefix of its sample ids.
        format: `llava` (LLaVA conversation JSON), `messages` (OpenAI-style JSONL with `images` / `audios`) or
            `easy-vqa` (the easy-vqa package's questions about its shapes, as conversations).
        path: the JSON / JSONL file (media paths in it are relative to it); unused for easy-vqa.
        limit: at most this many question-answer pairs per easy-vqa split (0 = all).
        prompt: easy-vqa's user turn; `{question}` is the question (after the image placeholder).
    """

    name: str = ""
    format: Literal["llava", "messages", "easy-vqa"] = "llava"
    path: str = ""
    limit: int = 0
    prompt: str = "{question} Answer the question using a single word or phrase."


@dataclass
class TaskTemplates:
    """OFA-style prompts over the corpus input; an empty prompt turns its task off.

    Args:
        caption: image + text rows: this prompt -> the caption.
        match: image-text matching as yes / no: `{text}` is the row's caption (-> yes) or another row's (-> no).
        yes / no: the two answers of `match`.
        label_questions: corpus source -> the question its labelled images answer with the label.
        transcribe: audio + text rows: this prompt -> the transcript.
        spoken_caption: audio + text rows of `spoken_caption_sources`: this prompt -> the text.
        spoken_caption_sources: corpus sources whose audio describes something rather than reads the text.
        infill: text-only rows: `{text}` with a span of words replaced by <mask> -> the whole text.
        infill_ratio: share of the words masked for infilling.
        infill_max_words: longer texts are left out of infilling (the prompt holds them whole).
    """

    caption: str = "what does the image describe?"
    match: str = 'does the image describe "{text}"?'
    yes: str = "yes"
    no: str = "no"
    label_questions: dict[str, str] = field(default_factory=lambda: {"digits": "which digit is written here?"})
    transcribe: str = "what does the audio say?"
    spoken_caption: str = "what does the speaker describe?"
    spoken_caption_sources: list[str] = field(default_factory=lambda: ["tuxpaint"])
    infill: str = 'what is the complete text of "{text}"?'
    infill_ratio: float = 0.25
    infill_max_words: int = 24


@dataclass
class InstructionsConfig:
    """Config of the `instructions` kind.

    Args:
        sources: conversation files and packages (may be empty when a corpus input gives task prompts).
        tasks: the task templates over the corpus input (used when the stage needs a `corpus` stage).
        template: the chat template (`tasks.chat.ChatTemplate`: mPLUG-Owl2's `USER: ... ASSISTANT: ...</s>`).
        max_text_tokens: ids per conversation at most (cut at the end); default: the pretraining model's
            text positions when a `pretrain` stage is an input, else 256.
        image_resolution: R of the stored pixels; default: the visual tokenizer's, else the pretraining
            model's image size, else 224.
        val_fraction: share of conversations without a split of their own put in `val` (by sample id).
        rows_per_file: rows per output Parquet file.
        records_per_task: conversations one Ray task processes.
        num_workers: Ray tasks in parallel (1 CPU each).
        batch_size: media per featurizer call (and per visual tokenizer forward).
        image / audio: media validation limits, as the corpus stage's.
        seed: the task templates' negatives and masked spans.
    """

    sources: list[ConversationSource] = field(default_factory=list)
    tasks: TaskTemplates = field(default_factory=TaskTemplates)
    template: ChatTemplate = field(default_factory=ChatTemplate)
    max_text_tokens: Optional[int] = None
    image_resolution: Optional[int] = None
    val_fraction: float = 0.05
    rows_per_file: int = 1024
    records_per_task: int = 256
    num_workers: int = 2
    batch_size: int = 32
    image: ImageLimits = field(default_factory=ImageLimits)
    audio: AudioLimits = field(default_factory=AudioLimits)
    seed: int = 0


def resolve(cfg: InstructionsConfig, inputs: dict, where: str) -> tuple[InstructionsConfig, dict]:
    import dataclasses

    kinds = [s.uses for s in inputs.values()]
    if kinds.count("text-tokenizer") != 1:
        raise ConfigError(f"{where}: needs: exactly one `text-tokenizer` stage (got {kinds.count('text-tokenizer')})")
    if not cfg.sources and "corpus" not in kinds:
        raise ConfigError(f"{where}: with.sources: is empty and no `corpus` stage is an input: nothing to read")
    names = [s.name for s in cfg.sources]
    if any(not n for n in names) or len(set(names)) != len(names) or "corpus" in names:
        raise ConfigError(f"{where}: with.sources: every source needs a unique non-empty `name` other than "
                          f"'corpus', got {names}")
    for i, s in enumerate(cfg.sources):
        if s.format != "easy-vqa" and not s.path:
            raise ConfigError(f"{where}: with.sources[{i}].path: a {s.format} source needs its file")
    facts = {name: s.facts for name, s in inputs.items()}
    visual = next((f["visual_tokens"] for n, f in facts.items() if inputs[n].uses == "visual-tokenizer"), None)
    model = next((f for n, f in facts.items() if inputs[n].uses == "pretrain"), {})
    resolution = cfg.image_resolution
    if visual is not None and resolution not in (None, visual["image_resolution"]):
        raise ConfigError(f"{where}: with.image_resolution: {resolution} does not match the visual tokenizer's "
                          f"{visual['image_resolution']}; leave it unset (it is taken from the tokenizer)")
    resolution = resolution or (visual or {}).get("image_resolution") or model.get("image_size") or DEFAULT_RESOLUTION
    limit = model.get("max_text_tokens")
    if cfg.max_text_tokens is not None and limit is not None and cfg.max_text_tokens > limit:
        raise ConfigError(f"{where}: with.max_text_tokens: {cfg.max_text_tokens} is more than the pretrained "
                          f"model's {limit} text positions")
    tokens = cfg.max_text_tokens or limit or DEFAULT_MAX_TOKENS
    resolved = dataclasses.replace(cfg, image_resolution=resolution, max_text_tokens=tokens)
    return resolved, {"image_resolution": resolution, "max_text_tokens": tokens}


def _units(cfg: InstructionsConfig, corpus) -> list[dict]:
    """Work units in output order: chunks of each source's records, then the corpus's row groups."""
    import json

    from pipelines.data import conversations
    from pipelines.visual_tokenizer.data import plan_units

    units = []
    for src in cfg.sources:
        if src.format == "llava":
            records = list(conversations.read_llava(src.name, src.path))
        elif src.format == "messages":
            records = list(conversations.read_messages(src.name, src.path))
        else:
            records = list(conversations.read_easy_vqa(src.name, src.prompt, src.limit))
        for i in range(0, len(records), cfg.records_per_task):
            units.append({"unit": json.dumps({"records": records[i:i + cfg.records_per_task]})})
    if corpus is not None:
        for split in ("train", "val"):
            units += [{"unit": json.dumps({"corpus": u})} for u in plan_units(corpus, split)]
    return units


@stage_kind("instructions", config=InstructionsConfig, version="1", num_cpus=0, resolve=resolve,
            description="instruction shards: LLaVA / messages conversations, easy-vqa, task prompts over the corpus")
def instructions(ctx) -> dict[str, float]:
    from pipelines.data import schema
    from pipelines.data.ingest import split_of
    from pipelines.data.instruction_rows import instruction_task
    from pipelines.data.raycompat import ensure_ray, no_ramp_up, task_pool
    from pipelines.data.writer import PartWriter

    cfg: InstructionsConfig = ctx.config
    started = time.time()
    tok = ctx.input("text-tokenizer")
    info = tok.extra["tokenizer"]
    with tok.open(info["model"]) as f:
        spm_model = f.read()
    corpora = ctx.inputs_of_kind("corpus")
    corpus = corpora[0] if corpora else None
    if corpus is not None:
        schema.check_corpus(corpus, ctx.stage)
    visuals = ctx.inputs_of_kind("visual-tokenizer")
    visual = visuals[0] if visuals else None
    units = _units(cfg, corpus)
    if not units:
        raise ValueError("instructions: the sources and the corpus hold no conversation")
    ray = ensure_ray()
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(instruction_task, batch_size=1, batch_format="pyarrow", num_cpus=1,
                        fn_kwargs={"spm_model": spm_model, "cfg": cfg, "visual_manifest": visual,
                                   "corpus_storage": corpus.storage_uri if corpus is not None else ""},
                        compute=task_pool(ray, cfg.num_workers, len(units)))
    ds = no_ramp_up(ds)

    out = ctx.output_dir
    writers = {s: PartWriter(out, s, schema.instructions_schema(), cfg.rows_per_file, ctx.set_rows)
               for s in schema.SPLITS}
    rejects = PartWriter(out, "rejects", schema.rejects_schema(), cfg.rows_per_file, ctx.set_rows)
    count, reasons, per_task, per_source = Counter(), Counter(), Counter(), Counter()
    names = schema.instructions_schema().names
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            count["read"] += 1
            per_source[row["source"]] += 1
            if row["reason"]:
                count["rejected"] += 1
                reasons[row["reason"]] += 1
                rejects.add_rows([{"source": row["source"], "key": row["sample_id"], "reason": row["reason"],
                                   "detail": row["detail"]}])
                continue
            row["split"] = row["split"] or split_of(row["sample_id"], cfg.val_fraction)
            count["accepted"] += 1
            count[row["split"]] += 1
            per_task[row["task"]] += 1
            count["tokens"] += len(row["text_ids"])
            count["supervised_tokens"] += sum(row["loss_mask"])
            writers[row["split"]].add_rows([{k: row[k] for k in names}])
    for w in (*writers.values(), rejects):
        w.close()
    # the tokenizer travels with the shards it tokenized: a model tuned on them decodes with it
    import os

    with open(os.path.join(out, TOKENIZER_FILE), "wb") as f:
        f.write(spm_model)
    if count["read"] != count["accepted"] + count["rejected"]:
        raise RuntimeError(f"instructions accounting broken: {dict(count)}")
    if not count["train"]:
        raise ValueError(f"instructions: no conversation was accepted for training; rejected by reason "
                         f"{dict(reasons)}")
    seconds = time.time() - started
    ctx.schema_version = schema.INSTRUCTIONS_SCHEMA_VERSION
    ctx.extra.update({
        "counts": {k: count[k] for k in ("read", "accepted", "rejected")},
        "rows_per_split": {s: count[s] for s in schema.SPLITS},
        "rows_per_task": dict(sorted(per_task.items())), "read_by_source": dict(sorted(per_source.items())),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "tokenizers": {"text": {"stage": tok.stage, "sha256": info["sha256"], "vocab_size": info["vocab_size"],
                                "ids": info["ids"], "model": TOKENIZER_FILE},
                       "visual": ({"stage": visual.stage, "fingerprint": visual.fingerprint} if visual else None)},
        "template": vars(cfg.template), "image_resolution": cfg.image_resolution,
        "max_text_tokens": cfg.max_text_tokens,
    })
    print(f"[instructions] read {count['read']} = accepted {count['accepted']} (train {count['train']}, val "
          f"{count['val']}) + rejected {count['rejected']} {dict(sorted(reasons.items()))}; tasks "
          f"{dict(sorted(per_task.items()))}", flush=True)
    metrics = {k: float(count[k]) for k in ("read", "accepted", "rejected", "train", "val", "tokens",
                                            "supervised_tokens")}
    metrics.update({f"task.{t}": float(n) for t, n in per_task.items()})
    metrics.update({f"rejected.{r}": float(n) for r, n in reasons.items()})
    metrics["seconds"] = round(seconds, 3)
    return metrics
