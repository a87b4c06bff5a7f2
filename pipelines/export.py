"""`omniway export`: a pretrain stage output -> omniway safetensors, or a torchscale / unilm BEiT-3 checkpoint;
a corpus or shards stage output -> webdataset tar shards.

The source is a committed stage output directory (``<storage>/<pipeline>/<stage>/<key>/``), or a pipeline
file and a stage name, resolved to the output of the stage's *current* cache key the way ``omniway run``
plans it. The pretrain stage writes ``model.safetensors`` (fp32 backbone, ``ModelConfig`` in the metadata),
``heads.safetensors`` and ``pretrain.json`` (``PretrainTask.export``); export reads only those.

Formats:
    omniway  a directory: ``model.safetensors`` (``model.load_checkpoint`` loads it), ``config.json``, and
             the pretraining heads (``heads.safetensors`` + ``pretrain.json``, which says how they were built).
    beit3    one torch file ``{"model": {"beit3.<torchscale key>": tensor}}`` (unilm's layout) that
             torchscale's ``BEiT3`` loads strictly, plus ``<name>.json`` holding the ``EncoderConfig``
             arguments that build that ``BEiT3`` (attention heads cannot be read from the weights).
             Key mapping is ``model.interop.beit3``'s; a config it cannot map is refused with its reasons.
    webdataset  a directory of tars ``<split>/NNNNN.tar`` (img2dataset / open_clip layout) from a corpus or
             shards output: ``pipelines.webdataset_export``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.train.instruct_task import HEAD_FILE, INSTRUCT_FILE
from pipelines.train.pretrain_task import HEADS_FILE, MODEL_FILE, PRETRAIN_FILE

FORMATS = ("omniway", "beit3", "webdataset")
# the stage kinds each format takes (omniway / beit3: any output holding a model file)
FORMAT_KINDS = {"omniway": "pretrain, instruct", "beit3": "pretrain, instruct", "webdataset": "corpus, shards"}
# what a model export carries beside the backbone, when the output has it: the pretraining heads, or the
# instruction-tuned LM head, its settings and the tokenizer it decodes with
MODEL_COMPANIONS = (HEADS_FILE, PRETRAIN_FILE, HEAD_FILE, INSTRUCT_FILE, "text.model")


class ExportError(ValueError):
    """The source cannot be exported as asked; the message says why and what to do."""


@dataclass
class ExportResult:
    """What an export wrote.

    Args:
        files: paths written.
        source: the stage output directory read.
        notes: facts a user should know (weights a format has no place for).
    """

    files: list[str]
    source: str
    notes: list[str] = field(default_factory=list)


# -- finding the stage output ----------------------------------------------------------------------------
def resolve_stage(pipeline: str, stage: str, *, overrides: list[str] | None = None, workdir: str = ".omniway",
                  storage: str | None = None) -> tuple[str, str]:
    """(storage root, output dir) of ``stage``'s output for its current cache key.

    Raises ``ExportError`` when that key has no committed output (never run, or its config, code or an
    input changed since), naming the command that produces it.
    """
    from pipelines.config import load_pipeline
    from pipelines.dag import plan
    from pipelines.storage import Storage
    from pipelines.typed import ConfigError

    spec = load_pipeline(pipeline, overrides or [], workdir=workdir, storage=storage)
    if stage not in spec.stages:
        raise ConfigError(f"{spec.path}: no stage named {stage!r} (stages: {', '.join(spec.stages)})")
    store = Storage(spec.storage)
    # every stage selected: a stage below a stale one is planned stale instead of raising
    p = plan(spec, store, set(spec.stages))[stage]
    if p.manifest is None:
        older = store.list_keys(spec.name, stage)
        hint = (f"; older outputs of this stage exist ({', '.join(older)}): pass one of those directories "
                f"under {store.uri(store.stage_dir(spec.name, stage))} to export it instead" if older else "")
        raise ExportError(f"stage {stage!r} of {spec.path} has no output for its current config ({p.reason}): "
                          f"run `omniway run {spec.path} --to {stage}` first{hint}")
    return spec.storage, store.output_dir(spec.name, stage, p.key)


@dataclass
class _Source:
    dir: str
    local: str  # a local directory holding the files (a temporary copy for URI storage)


def _open_source(output_dir: str, storage_root: str | None, tmp: str) -> _Source:
    """Check the output lists a model file and make its files local (safetensors reads local files)."""
    from pipelines.manifest import sha256_file
    from pipelines.storage import Storage, _is_uri

    store = Storage(storage_root) if storage_root and _is_uri(storage_root) else None
    if store is None and not os.path.isdir(output_dir):
        raise ExportError(f"{output_dir}: no such directory (give a pretrain stage output directory, or "
                          "PIPELINE.yaml --stage NAME)")
    manifest = (store or Storage(os.path.dirname(os.path.abspath(output_dir)))).read_manifest(output_dir)
    listed = {e["path"]: e for e in (manifest or {}).get("files", [])}
    names = [n for n in (MODEL_FILE, *MODEL_COMPANIONS)
             if (n in listed if manifest else os.path.exists(os.path.join(output_dir, n)))]
    if MODEL_FILE not in names:
        what = f"stage {manifest['stage']!r} (kind {manifest['kind']!r})" if manifest else output_dir
        raise ExportError(f"{what} output has no {MODEL_FILE}: not a model stage output (formats take: "
                          + "; ".join(f"{f}: {k}" for f, k in FORMAT_KINDS.items()) + ")")
    local = output_dir
    try:
        if store is not None:
            local = tmp
            for n in names:
                with store.open_input(f"{output_dir}/{n}") as src, open(os.path.join(tmp, n), "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        hashes = {n: sha256_file(os.path.join(local, n)) for n in names} if manifest else {}
    except (FileNotFoundError, OSError) as e:
        raise ExportError(f"{output_dir}: a file its manifest lists cannot be read ({e}); rerun the stage with "
                          "--force") from None
    if manifest:  # the manifest is the output's contract: a file changed since commit is not that output
        for n in names:
            if hashes[n] != listed[n]["sha256"]:
                raise ExportError(f"{output_dir}/{n} does not match the sha256 its manifest lists: the output "
                                  "was modified or copied incompletely; rerun the stage with --force")
    return _Source(output_dir, local)


def _read_model(src: _Source):
    """(ModelConfig, backbone tensors), checked against the config's module on the meta device (keys and
    shapes, without allocating the model)."""
    import torch

    from model import CheckpointKeyError, read_checkpoint
    from model.checkpoint import check_keys

    try:
        config, tensors = read_checkpoint(os.path.join(src.local, MODEL_FILE))
        with torch.device("meta"):
            skeleton = config.build()
        check_keys(skeleton, tensors, where=f"{src.dir}/{MODEL_FILE}")
    except (CheckpointKeyError, ValueError) as e:  # not an omniway checkpoint, or keys/shapes off its config
        raise ExportError(str(e)) from None
    return config, tensors


# -- formats ---------------------------------------------------------------------------------------------
def _write_omniway(src: _Source, config, dest: str) -> list[str]:
    """Copy the checked weights (bytes unchanged: the stage's file already is an omniway checkpoint) and the
    heads, and write the config as JSON for tools that do not read safetensors metadata."""
    os.makedirs(dest, exist_ok=True)
    written = []
    for name in (MODEL_FILE, *MODEL_COMPANIONS):
        if os.path.exists(os.path.join(src.local, name)):
            shutil.copyfile(os.path.join(src.local, name), os.path.join(dest, name))
            written.append(os.path.join(dest, name))
    config_path = os.path.join(dest, "config.json")
    Path(config_path).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    return written + [config_path]


def _write_beit3(config, backbone: dict, dest: str) -> tuple[list[str], list[str]]:
    import torch

    from model.interop.beit3 import BRANCH, PREFIX, beit3_to_omniway, encoder_config_args, omniway_to_beit3

    if Path(dest).suffix == ".json":  # the EncoderConfig arguments go to <name>.json beside it
        raise ExportError(f"--out {dest}: give the BEiT-3 checkpoint a .pt (or .pth) name")
    try:
        theirs = omniway_to_beit3(backbone, config)
    except ValueError as e:  # the interop's compatibility check names every reason
        raise ExportError(f"this model cannot be written as a torchscale BEiT-3 checkpoint: {e}") from None
    # Map back to find what the file would leave out: only other modalities' weights may be dropped.
    mapped, _ = beit3_to_omniway(theirs, config)
    others = [m for m in config.modalities if m not in BRANCH]
    left = sorted(set(backbone) - set(mapped))
    unplaced = [k for k in left if not any(m in k.split(".") for m in others)]
    if unplaced:
        raise ExportError("this model cannot be written as a torchscale BEiT-3 checkpoint: it has weights "
                          f"BEiT-3 has no place for: {', '.join(unplaced[:10])}")
    notes = ([f"modalities {', '.join(others)}: {len(left)} tensors not written (torchscale BEiT-3 has only "
              "vision and text branches)"] if others else [])
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": theirs}, dest)
    args_path = str(Path(dest).with_suffix(".json"))
    Path(args_path).write_text(json.dumps({
        "torchscale_encoder_config": encoder_config_args(config),
        "key_prefix": PREFIX,
        "omniway_config": config.to_dict(),
    }, indent=2, sort_keys=True) + "\n")
    return [dest, args_path], notes


def export(source: str, fmt: str, out: str, *, stage: str | None = None, overrides: list[str] | None = None,
           workdir: str = ".omniway", storage: str | None = None) -> ExportResult:
    """Export a pretrain stage output (omniway, beit3), or a corpus or shards output (webdataset).

    Args:
        source: a stage output directory, or a pipeline YAML file (then ``stage`` names the stage).
        fmt: ``omniway`` (``out`` is a directory), ``beit3`` (``out`` is a ``.pt`` file) or ``webdataset``
            (``out`` is a new or empty directory).
        out: where to write.
        stage: with a pipeline file: the stage whose current output to export.
        overrides: ``STAGE.KEY=VALUE`` settings applied to the pipeline, as ``omniway run --set``.
        workdir: the pipeline's workdir (default storage lives under it).
        storage: overrides the pipeline's storage root.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    is_pipeline = os.path.isfile(source) and source.endswith((".yaml", ".yml"))
    if is_pipeline and not stage:
        raise ExportError(f"{source} is a pipeline file: name the stage to export with --stage NAME")
    if stage and not is_pipeline:
        raise ExportError(f"--stage needs a pipeline file as the source, got {source!r}")
    if is_pipeline:
        storage_root, output_dir = resolve_stage(source, stage, overrides=overrides, workdir=workdir,
                                                 storage=storage)
    else:
        storage_root, output_dir = None, source.rstrip("/")
    if fmt == "webdataset":  # reads the manifest first: the stage kind decides what may be exported
        from pipelines.webdataset_export import export_webdataset

        return export_webdataset(output_dir, storage_root, out)
    with tempfile.TemporaryDirectory(prefix="omniway-export-") as tmp:
        src = _open_source(output_dir, storage_root, tmp)
        config, backbone = _read_model(src)
        if fmt == "omniway":
            return ExportResult(_write_omniway(src, config, out), output_dir)
        files, notes = _write_beit3(config, backbone, out)
        return ExportResult(files, output_dir, notes)
