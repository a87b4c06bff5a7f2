"""Stage kind `corpus`: named sources -> validated samples + rejects, split into train / val.

Flow (`num_workers` Ray tasks at a time; the stage process sees per-unit and per-part summaries only):
    work units (stage process: list files / tars)
      -> ingest tasks: read bytes, decode, validate, hash, split by sample_id hash; rows into
         per-unit staging files in storage                        Ray tasks  (`data.ingest`)
      -> source limits from the per-unit record counts
      -> dedup: (content_hash, sample_id, unit, idx) records hash-partitioned by content hash,
         the first copy in plan order wins                        one task, or Ray Data's keyed
                                                                  repartition  (`data.corpus_dedup`)
      -> part tasks: fixed-rows Parquet files train/, val/, rejects/, duplicates/, written into the
         output directory by the tasks themselves                 Ray tasks  (`data.corpus_parts`)
The files are those a one-process loop over the same stream writes, byte for byte, whatever the
number of workers. Accounting: read = accepted + rejected + duplicates, checked before anything
commits. The per-sample function is `pipelines.data.normalize.normalize_record`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pipelines.registry import stage_kind
from pipelines.typed import ConfigError
from pipelines.data.schema import MODALITIES

SourceFormat = Literal["webdataset", "jsonl", "csv", "parquet", "text",
                       "tuxpaint", "asterisk", "digits"]


@dataclass
class SourceConfig:
    """One named input of a corpus stage.

    Args:
        name: the `source` value of its samples and the prefix of their sample ids.
        format: webdataset (tar shards), jsonl / csv (index files with relative media
            paths), parquet (binary or `{bytes, path}` columns), text (a tree of text
            files), or a demo corpus: tuxpaint, asterisk, digits.
        path: a file, a directory (searched recursively) or a glob. For tuxpaint the
            stamps root, for asterisk the sounds directory; unused for digits.
        extensions: file name endings to read under a directory (defaults per format).
        text_field / image_field / audio_field / label_field / id_field: column or key
            names in index files, Parquet and webdataset json. For webdataset,
            text_field names a key of the `.json` member used when no `.txt` exists.
        text_unit: text format only: one document per `file`, `paragraph` or `line`.
        require: modalities a record must have; a record lacking one is rejected
            as `missing_member` (e.g. `[image, text]` for caption pairs).
        transcripts: asterisk only: the `key: text` transcript file (gz or plain).
        caption_template: digits only: `{label}` is replaced by the digit.
        limit: at most this many records from this source (0 = all), taken in the
            reader's deterministic order; records past it are not read.
        max_files: at most this many input files (0 = all), in sorted order.
        files_per_unit: text, tuxpaint and asterisk: how many input files one Ray task reads (other
            formats read one file per task).
        label_names: the name of each label (label i is `label_names[i]`), recorded in the manifest for the
            stages below (zero-shot classification prompts); digits: "0" to "9" when unset. A label in
            the data may be a class name instead of a number: it is stored as its place here. Unset, the
            names of a jsonl / csv / parquet source are taken from its data, sorted (webdataset: set it).
    """

    name: str = ""
    format: SourceFormat = "text"
    path: str = ""
    extensions: list[str] = field(default_factory=list)
    text_field: str = "text"
    image_field: str = "image"
    audio_field: str = "audio"
    label_field: str = "label"
    id_field: str = ""
    text_unit: Literal["file", "paragraph", "line"] = "file"
    require: list[str] = field(default_factory=list)
    transcripts: str = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
    caption_template: str = "a handwritten digit {label}"
    limit: int = 0
    max_files: int = 0
    files_per_unit: int = 64
    label_names: list[str] = field(default_factory=list)

    def label_table(self) -> list[str]:
        """The label names this source's manifest records (empty: its labels have no names)."""
        if not self.label_names and self.format == "digits":
            return [str(d) for d in range(10)]
        return list(self.label_names)


@dataclass
class TextLimits:
    """Args:
        min_chars: shorter text (after NFC + trim) is rejected as empty_text when 0 chars, too_short otherwise.
        max_chars: longer text is rejected as too_long.
    """

    min_chars: int = 1
    max_chars: int = 20_000


@dataclass
class ImageLimits:
    """Args:
        min_side: an image whose shorter side is below this is rejected as too_small.
        max_side: a longer side above this is downscaled to it (keeping aspect).
        max_pixels: the header's width × height above this is a decompression bomb;
            checked before any pixel is decoded.
        max_bytes: encoded images larger than this are rejected as too_large.
    """

    min_side: int = 8
    max_side: int = 1024
    max_pixels: int = 40_000_000
    max_bytes: int = 20_000_000


@dataclass
class AudioLimits:
    """Args:
        sample_rate: output rate (Hz); input is resampled with soxr.
        min_seconds / max_seconds: duration bounds (too_short / too_long).
        max_bytes: encoded audio larger than this is rejected as too_large.
        format: how accepted audio is stored: FLAC (PCM16 inside) or PCM16 WAV.
    """

    sample_rate: int = 16_000
    min_seconds: float = 0.1
    max_seconds: float = 30.0
    max_bytes: int = 50_000_000
    format: Literal["flac", "wav"] = "flac"


@dataclass
class CorpusConfig:
    """Config of the `corpus` kind.

    Args:
        sources: the named inputs (at least one).
        val_fraction: share of samples put in `val`, by a hash of sample_id.
        rows_per_file: rows per output Parquet file.
        num_workers: Ray tasks decoding, validating and writing in parallel (1 CPU each).
        batch_size: records per result table a read task yields.
        text / image / audio: per-modality validation limits.
        dedup: drop exact duplicates (same normalised content) after the first.
        plot_samples: images in the sample grid artifact (0 = none).
    """

    sources: list[SourceConfig] = field(default_factory=list)
    val_fraction: float = 0.05
    rows_per_file: int = 1024
    num_workers: int = 2
    batch_size: int = 32
    text: TextLimits = field(default_factory=TextLimits)
    image: ImageLimits = field(default_factory=ImageLimits)
    audio: AudioLimits = field(default_factory=AudioLimits)
    dedup: bool = True
    plot_samples: int = 16


def check_config(cfg: CorpusConfig) -> None:
    """What one dataclass field cannot say alone; ValueError naming the key."""
    if not cfg.sources:
        raise ValueError("sources: is empty; name at least one source")
    names = [s.name for s in cfg.sources]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"sources: every source needs a unique non-empty `name`, got {names}")
    for i, s in enumerate(cfg.sources):
        bad = sorted(set(s.require) - set(MODALITIES))
        if bad:
            raise ValueError(f"sources[{i}].require: unknown modalities {bad} (known: {', '.join(MODALITIES)})")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be in [0, 1), got {cfg.val_fraction}")


def with_data_label_names(cfg: CorpusConfig) -> CorpusConfig:
    """``cfg`` with each source's `label_names` filled from the class names in its data where it has
    some and none are configured (sorted: the same table however the files are split into tasks).
    ValueError naming the key: names the configured table lacks, or names mixed with label numbers.
    Runs when the pipeline loads: it reads the label column of every jsonl / csv / parquet file of the
    sources (their media are not opened)."""
    import dataclasses

    from pipelines.data.sources import labels_in_data

    out = []
    for i, s in enumerate(cfg.sources):
        try:
            found = labels_in_data(s)
        except FileNotFoundError:  # no files (yet): the stage says so when it plans its reads
            found = None
        names, numbers = found or ([], 0)
        if s.label_names:
            missing = sorted(set(names) - set(s.label_names))
            if missing:
                raise ValueError(f"sources[{i}].label_names: the data of source {s.name!r} has class names "
                                 f"that are not in it: {', '.join(map(repr, missing[:10]))}"
                                 + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
        elif names and numbers:
            raise ValueError(f"sources[{i}].label_field: source {s.name!r} labels {numbers} record(s) with a "
                             f"number and others with a class name ({', '.join(map(repr, names[:3]))}...): "
                             "a number would mean a place in a table the data does not give; use one kind, "
                             "or set label_names")
        elif names:
            s = dataclasses.replace(s, label_names=names)
        out.append(s)
    return dataclasses.replace(cfg, sources=out)


def label_tables(cfg: CorpusConfig) -> dict[str, list[str]]:
    """source -> its label names (label i -> names[i]), for zero-shot classification downstream."""
    return {s.name: s.label_table() for s in cfg.sources if s.label_table()}


def resolve(cfg: CorpusConfig, inputs: dict, where: str) -> tuple[CorpusConfig, dict]:
    try:
        check_config(cfg)
        # names found in the data join the resolved config, so the cache key follows them (a source
        # without names, as every demo source, keeps its config and its key)
        cfg = with_data_label_names(cfg)
    except ValueError as e:
        raise ConfigError(f"{where}: with.{e}") from None
    return cfg, {"label_names": label_tables(cfg)}


@stage_kind("corpus", config=CorpusConfig, version="1", num_cpus=0, resolve=resolve,
            description="read sources (webdataset, jsonl/csv, parquet, text, demo corpora), "
                        "validate, dedup, quarantine, split")
def corpus(ctx) -> dict[str, float]:
    from pipelines.data import schema
    from pipelines.data.corpus_build import build, grid_samples
    from pipelines.data.corpus_staging import Staging

    cfg: CorpusConfig = ctx.config
    check_config(cfg)
    # the label names found in the data are in `cfg` already (resolved when the pipeline loaded); a name
    # the data gained since is a reader's reject (read_error), not a second scan of every label here
    started = time.time()
    staging = Staging.new(ctx.storage_uri or ctx.output_dir, ctx.pipeline, ctx.stage, ctx.key)
    try:
        built = build(cfg, ctx.output_dir, staging, ctx.set_rows)
    finally:
        staging.remove()
    parts = built["parts"]
    count, reasons, modalities = Counter(), Counter(), Counter()
    per_source: Counter = Counter()
    for u, cutoff in zip(built["units"], built["cutoffs"]):
        per_source[u["source"]] += cutoff
    count["read"] = sum(built["cutoffs"])
    for p in parts:
        table, stats = p["table"], p["stats"]
        if table in schema.SPLITS:
            count["accepted"] += p["rows"]
            count[table] += p["rows"]
            modalities.update(stats["modalities"])
            count.update({"combo:" + k: v for k, v in stats["combinations"].items()})
        elif table == "rejects":
            count["rejected"] += p["rows"]
            reasons.update(stats["reasons"])
        else:
            count["duplicates"] += p["rows"]
    if count["read"] != count["accepted"] + count["rejected"] + count["duplicates"]:
        raise RuntimeError(f"corpus accounting broken: {dict(count)}")
    seconds = time.time() - started
    nodes = {s["node"] for s in built["summaries"].values()} | {p["node"] for p in parts}
    print(f"[corpus] read {count['read']} = accepted {count['accepted']} + rejected "
          f"{count['rejected']} + duplicates {count['duplicates']}; rejected by reason "
          f"{dict(sorted(reasons.items()))}; {count['read'] / max(seconds, 1e-9):.1f} samples/s "
          f"({len(built['units'])} units, {len(parts)} parts, tasks on {len(nodes)} node(s))",
          flush=True)

    ctx.schema_version = schema.CORPUS_SCHEMA_VERSION
    ctx.extra.update({
        "counts": {k: count[k] for k in ("read", "accepted", "rejected", "duplicates")},
        "rows_per_split": {s: count[s] for s in schema.SPLITS},
        "rows_per_modality": {m: modalities[m] for m in schema.MODALITIES},
        "rows_per_combination": {k[6:]: v for k, v in sorted(count.items())
                                 if k.startswith("combo:")},
        "rejected_by_reason": dict(sorted(reasons.items())),
        "read_by_source": dict(sorted(per_source.items())),
        "label_names": label_tables(cfg),
    })
    metrics = {k: float(count[k]) for k in ("read", "accepted", "rejected", "duplicates",
                                            "train", "val")}
    metrics.update({f"rejected.{r}": float(reasons[r]) for r in schema.REJECT_REASONS})
    metrics.update({f"modality.{m}": float(modalities[m]) for m in schema.MODALITIES})
    metrics["seconds"] = round(seconds, 3)
    metrics["samples_per_s"] = round(count["read"] / max(seconds, 1e-9), 2)
    metrics["nodes"] = float(len(nodes))
    samples = grid_samples(parts, ctx.output_dir, cfg.plot_samples) if cfg.plot_samples else []
    _artifacts(ctx, samples, [p["path"] for p in parts if p["table"] == "rejects"])
    return metrics


def _artifacts(ctx, samples: list[dict], reject_files: list[str]) -> None:
    """Sample image grid and the rejects table, attached to the stage's MLflow run."""
    import os

    scratch = ctx.scratch_dir()
    if samples:
        from pipelines.data.plots import image_grid

        path = os.path.join(scratch, "corpus_samples.png")
        image_grid([(s["image"], s["text"] or s["sample_id"]) for s in samples], path)
        ctx.log_artifact(path)
    for rel in reject_files:
        ctx.log_artifact(os.path.join(ctx.output_dir, rel), "rejects")
