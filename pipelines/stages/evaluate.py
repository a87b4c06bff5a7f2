"""Stage kind `evaluate`: a model + the data to score it on -> metrics beside their baselines, predictions,
and one report a person reads.

    needs: a model (a `pretrain` or `instruct` stage, or `checkpoint:` a torchscale BEiT-3 file) and data
    (`shards` and / or `instructions` stages)
    suites (config) --> rows chosen in the driver (pipelines.evaluation.data)
        --> Ray Data actors: embeddings / generations (pipelines.evaluation.workers)
        --> metrics from the gathered outputs (pipelines.evaluation.suites, on tasks' metric functions)
    --> <suite>/metrics.json (CLIP_benchmark's layout), <suite>/predictions.jsonl (generation suites),
        results.json (every suite), report.html; all attached to the stage's MLflow run.

Embedding suites (retrieval, zero_shot_classification, linear_probe) use the `pretrain` input (or the
checkpoint, or an `instruct` input's backbone when that is the only model); generation suites (captioning,
vqa, asr) the `instruct` input. `omniway report PIPELINE` prints the results again, or two runs side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines.registry import stage_kind
from pipelines.typed import ConfigError

EMBEDDING_TASKS = ("retrieval", "zero_shot_classification", "linear_probe")
GENERATION_TASKS = ("captioning", "vqa", "asr")
# the instruction rows a generation suite scores when its `tasks` is unset (pipelines.data.conversations)
DEFAULT_ROW_TASKS = {"captioning": ["caption"], "vqa": ["vqa"], "asr": ["transcribe"]}
DATA_KIND = {**{t: "shards" for t in EMBEDDING_TASKS}, **{t: "instructions" for t in GENERATION_TASKS}}
RESULTS_FILE, REPORT_FILE = "results.json", "report.html"


@dataclass
class SuiteConfig:
    """One scored task on one data set.

    Args:
        name: the suite's name: its output folder and the prefix of its MLflow metrics.
        task: `retrieval` (R@1/5/10, mean / median rank, both directions), `zero_shot_classification`,
            `linear_probe`, or for instruct models `captioning` (BLEU-4, CIDEr-D, ROUGE-L), `vqa`
            (normalised exact match), `asr` (WER, CER).
        data: the input stage holding the rows; default: the one `shards` input (embedding tasks) or the
            one `instructions` input (generation tasks).
        split: the split scored (`linear_probe` fits on `train` and scores this one).
        sources: only rows of these sources (a corpus source's name, also for the task prompts built over it).
        tasks: generation suites: only instruction rows of these tasks; default: `caption` / `vqa` / `transcribe`.
        modality: zero-shot classification and linear probe: the classified modality (`image` or `audio`).
        pairs: retrieval: modality pairs scored (default: image-text, audio-text, image-audio where present).
        ks: retrieval cut-offs.
        classes: zero-shot class names (label i -> classes[i]); default: the corpus's label names of `sources`.
        templates: zero-shot prompts; `{}` is replaced by the class name (open_clip's templates).
        limit: at most this many items, the first by sample id (0 = all).
        max_new_tokens / num_beams / length_penalty / no_repeat_ngram_size / min_new_tokens: decoding.
        examples: items shown in the report (retrieval queries, answers beside their images).
    """

    name: str = ""
    task: Literal["retrieval", "zero_shot_classification", "linear_probe", "captioning", "vqa", "asr"] = "retrieval"
    data: str = ""
    split: Literal["train", "val"] = "val"
    sources: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    modality: Literal["image", "audio"] = "image"
    pairs: list[list[str]] = field(default_factory=list)
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    classes: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: ["a photo of {}."])
    limit: int = 0
    max_new_tokens: int = 16
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    examples: int = 8


@dataclass
class CheckpointConfig:
    """A published checkpoint scored instead of a model stage.

    Args:
        path: a torchscale / unilm BEiT-3 `.pth` file (`{"model": {...}}`, read through `model.interop.beit3`).
        heads: attention heads (they cannot be read from the weights); 0: width / 64, as in every BEiT-3.
        fingerprint: filled in when the pipeline loads (the file's size and modification time), so a
            replaced file changes the stage's cache key; leave it unset.
    """

    path: str = ""
    heads: int = 0
    fingerprint: str = ""


@dataclass
class EvaluateConfig:
    """Config of the `evaluate` kind.

    Args:
        suites: what is scored (`SuiteConfig`); names unique.
        checkpoint: a BEiT-3 checkpoint for the embedding suites instead of a `pretrain` input.
        batch_size: rows per actor batch.
        num_workers: Ray Data actors per suite (each loads the model once).
        cpus_per_worker: CPUs per actor (its torch threads).
        gpus_per_worker: GPUs per actor (0: CPU).
    """

    suites: list[SuiteConfig] = field(default_factory=list)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    batch_size: int = 64
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


def with_defaults(suite: SuiteConfig, kinds: dict[str, str]) -> SuiteConfig:
    """The suite with what it leaves unset filled in: its data, the one input of the kind its task reads
    (``kinds``: input name -> stage kind), and the instruction tasks a generation suite scores."""
    import dataclasses

    names = [n for n, k in kinds.items() if k == DATA_KIND[suite.task]]
    data = suite.data or (names[0] if len(names) == 1 else "")
    return dataclasses.replace(suite, data=data, tasks=suite.tasks or DEFAULT_ROW_TASKS.get(suite.task, []))


def resolve(cfg: EvaluateConfig, inputs: dict, where: str) -> tuple[EvaluateConfig, dict]:
    """Every suite's data stage named and of the right kind, a model for every suite, names unique."""
    import dataclasses

    if not cfg.suites:
        raise ConfigError(f"{where}: with.suites: is empty: nothing to evaluate")
    kinds = [s.uses for s in inputs.values()]
    for kind in ("pretrain", "instruct"):
        if kinds.count(kind) > 1:
            raise ConfigError(f"{where}: needs: at most one `{kind}` stage (got {kinds.count(kind)})")
    if cfg.checkpoint.path and "pretrain" in kinds:
        raise ConfigError(f"{where}: with.checkpoint.path: and a `pretrain` input: the embedding suites would "
                          "have two models; drop one")
    if cfg.checkpoint.path:
        import os

        path = os.path.abspath(os.path.expanduser(cfg.checkpoint.path))
        if not os.path.isfile(path):
            raise ConfigError(f"{where}: with.checkpoint.path: {cfg.checkpoint.path!r} is not a file")
        st = os.stat(path)
        cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(
            cfg.checkpoint, path=path, fingerprint=f"{st.st_size}-{st.st_mtime_ns}"))
    names = [s.name for s in cfg.suites]
    suites = []
    for i, s in enumerate(cfg.suites):
        key = f"with.suites[{i}]"
        if not s.name or names.count(s.name) > 1 or "/" in s.name:
            raise ConfigError(f"{where}: {key}.name: every suite needs a unique name without '/', got {names}")
        want = DATA_KIND[s.task]
        s = with_defaults(s, {n: spec.uses for n, spec in inputs.items()})
        data = s.data
        if not data:
            raise ConfigError(f"{where}: {key}.data: a {s.task} suite reads rows of a `{want}` stage: name one of the "
                              f"inputs ({', '.join(inputs) or 'none'})")
        if data not in inputs or inputs[data].uses != want:
            raise ConfigError(f"{where}: {key}.data: {data!r} is not a `{want}` input of this stage "
                              f"(inputs: {', '.join(f'{n} ({s.uses})' for n, s in inputs.items())})")
        if s.task in GENERATION_TASKS and "instruct" not in kinds:
            raise ConfigError(f"{where}: {key}.task: {s.task} generates answers: needs an `instruct` stage")
        if s.task in EMBEDDING_TASKS and not ({"pretrain", "instruct"} & set(kinds) or cfg.checkpoint.path):
            raise ConfigError(f"{where}: {key}.task: {s.task} needs a `pretrain` (or `instruct`) stage or "
                              "with.checkpoint.path")
        if s.task == "zero_shot_classification" and not s.templates:
            raise ConfigError(f"{where}: {key}.templates: a zero-shot suite needs at least one prompt template")
        if any(t.count("{}") != 1 for t in s.templates):
            raise ConfigError(f"{where}: {key}.templates: each template holds `{{}}` once (the class name)")
        if s.task == "zero_shot_classification" and not s.classes:
            tables = inputs[data].facts.get("label_names")
            if tables is not None:
                named = [src for src in (s.sources or list(tables)) if src in tables]
                if len(named) != 1:
                    raise ConfigError(f"{where}: {key}.classes: unset, and the corpus names the labels of "
                                      f"{sorted(tables) or 'no source'}: give `sources: [ONE]` or `classes`")
        if s.task == "linear_probe" and s.split == "train":
            raise ConfigError(f"{where}: {key}.split: a linear probe fits on train; score it on val")
        for pair in s.pairs:
            if len(pair) != 2 or not set(pair) <= {"text", "image", "audio"} or pair[0] == pair[1]:
                raise ConfigError(f"{where}: {key}.pairs: {pair!r} is not two of text, image, audio")
        reads_text = s.task == "zero_shot_classification" or (
            s.task == "retrieval" and (not s.pairs or any("text" in p for p in s.pairs)))
        if reads_text and "text-tokenizer" not in kinds:
            raise ConfigError(f"{where}: needs: the {s.task} suite {s.name!r} reads text: add the `text-tokenizer` "
                              f"stage that tokenized {data!r}")
        if any(k < 1 for k in s.ks):
            raise ConfigError(f"{where}: {key}.ks: cut-offs are >= 1, got {s.ks}")
        suites.append(s)
    return dataclasses.replace(cfg, suites=suites), {}


@stage_kind("evaluate", config=EvaluateConfig, version="2", num_cpus=0, resolve=resolve,
            description="scores a model: retrieval, zero-shot, linear probe, captioning, VQA, ASR; report.html")
def evaluate(ctx) -> dict[str, float]:
    import json
    import os

    from pipelines.evaluation.report import render_report
    from pipelines.evaluation.suites import run_suite

    cfg = ctx.config
    results = []
    kinds = {n: m.kind for n, m in ctx.inputs.items()}
    for suite in cfg.suites:
        result = run_suite(ctx, with_defaults(suite, kinds))
        folder = os.path.join(ctx.output_dir, suite.name)
        os.makedirs(folder, exist_ok=True)
        predictions = result.pop("predictions", None)
        with open(os.path.join(folder, "metrics.json"), "w") as f:
            json.dump({k: v for k, v in result.items() if k != "details"}, f, indent=2)
        if predictions is not None:
            with open(os.path.join(folder, "predictions.jsonl"), "w") as f:
                f.write("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
        results.append(result)
        h = result["headline"]
        print(f"[evaluate] {suite.name} ({suite.task}, n {result['data']['n']}): {h} {result['metrics'][h]:.4f}, "
              f"{result['baseline_name']} {result['baselines'].get(h, float('nan')):.4f}", flush=True)
    title = f"{ctx.pipeline} / {ctx.stage}"
    render_report(results, os.path.join(ctx.output_dir, REPORT_FILE), title=f"omniway evaluation: {title}",
                  subtitle=f"key {ctx.key}")
    with open(os.path.join(ctx.output_dir, RESULTS_FILE), "w") as f:
        json.dump([{k: v for k, v in r.items() if k != "details"} for r in results], f, indent=2)
    for root, _, files in os.walk(ctx.output_dir):
        for name in files:
            path = os.path.join(root, name)
            sub = os.path.relpath(root, ctx.output_dir)
            ctx.log_artifact(path, None if sub == "." else sub)
    ctx.extra.update({"suites": [r["suite"] for r in results], "report": REPORT_FILE, "results": RESULTS_FILE})
    metrics: dict[str, float] = {}
    for r in results:
        for k, v in r["metrics"].items():
            metrics[f"{r['suite']}/{k}"] = float(v)
        for k, v in r["baselines"].items():
            metrics[f"{r['suite']}/baseline/{k}"] = float(v)
    return metrics
