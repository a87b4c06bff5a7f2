"""The `omniway` command line.

Heavy libraries (ray, mlflow, torch) are imported only by the subcommands that
need them, so `omniway --help` and a fully cached `omniway run` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules adding subcommands through `add_commands(subparsers, this_module)`: `omniway report` (evaluation
# results), `omniway verify` (outputs against their manifests), `omniway sync-metrics` (what stages logged
# and MLflow did not take); `omniway submit` and `omniway jobs` from cluster/, loaded by name (no import
# statement: the direction is cluster -> pipelines).
COMMAND_MODULES: tuple[str, ...] = ("pipelines.evaluation.summary", "pipelines.integrity",
                                    "pipelines.sync_metrics", "cluster.jobs")


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/configs/demo.yaml")
    _add_store_args(p)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then "
                        "sqlite:///<workdir>/mlflow.db)")


def _add_store_args(p: argparse.ArgumentParser, when: str = "") -> None:
    """--set, --workdir and --storage: what, with the pipeline file, fixes the stages' keys and outputs.
    ``when`` prefixes the help (export takes them only with a pipeline file)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help=f"{when}override a stage config value (repeatable; it changes the stage's cache key); "
                        "VALUE is parsed as YAML")
    p.add_argument("--workdir", default=os.environ.get("OMNIWAY_WORKDIR", ".omniway"),
                   help=f"{when}where default storage and the MLflow database live (default: .omniway)")
    p.add_argument("--storage", default=None,
                   help=f"{when}storage root (local path or pyarrow.fs URI); overrides the pipeline's")


def add_selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", action="append", default=[], metavar="STAGE",
                   help="run just this stage (repeatable); its inputs must be cached")
    p.add_argument("--from", dest="from_", metavar="STAGE", help="run STAGE and everything below it")
    p.add_argument("--to", metavar="STAGE", help="run STAGE and everything it needs")
    p.add_argument("--force", action="store_true", help="rerun the selected stages even if cached")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniway",
        description="Multimodal pretraining as a DAG of cached stages on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the stale stages of a pipeline")
    add_pipeline_args(run)
    add_selection_args(run)
    run.add_argument("--address", default=None,
                     help="Ray cluster to run on (default: $RAY_ADDRESS, else an embedded local Ray)")
    run.add_argument("--verbose", action="store_true",
                     help="also print what Ray, Ray Train, Ray Data and DeepSpeed say (by default it goes to "
                          "Ray's log folder only, which the summary names)")
    run.set_defaults(handler=cmd_run)

    ui = sub.add_parser("ui", help="start the MLflow UI on the pipeline's tracking store (127.0.0.1)")
    add_pipeline_args(ui)
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    ui.set_defaults(handler=cmd_ui)

    status = sub.add_parser("status", help="state, key, last run and MLflow run of each stage")
    add_pipeline_args(status)
    status.set_defaults(handler=cmd_status)

    stages = sub.add_parser("stages", help="registered stage kinds with their config fields")
    stages.add_argument("kind", nargs="?", default=None,
                        help="show this kind in full: every field's whole description, nested settings expanded")
    stages.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="also import MODULE, which registers more stage kinds (repeatable)")
    stages.set_defaults(handler=cmd_stages)

    export = sub.add_parser("export", help="write a pretrain or instruct stage's weights as omniway safetensors "
                                           "(instruct: with its LM head, settings and tokenizer) or a "
                                           "torchscale BEiT-3 checkpoint, or a corpus / shards stage as "
                                           "webdataset tars")
    export.add_argument("source", help="a stage output directory (pretrain or instruct; corpus or shards for "
                                       "webdataset), or PIPELINE.yaml with --stage")
    export.add_argument("--stage", default=None, help="with a pipeline file: export this stage's output for "
                                                      "its current config")
    export.add_argument("--format", dest="fmt", choices=["omniway", "beit3", "webdataset"], default="omniway",
                        help="omniway: a directory with model.safetensors, config.json and the heads; beit3: "
                             "a .pt file in unilm's layout (vision+text models only); webdataset (corpus or "
                             "shards stages): <split>/NNNNN.tar shards in the img2dataset / open_clip layout "
                             "(default: omniway)")
    export.add_argument("--out", required=True, help="output directory (omniway; webdataset: new or empty) or "
                                                     ".pt file (beit3)")
    _add_store_args(export, when="with a pipeline file, as the run had it: ")
    export.set_defaults(handler=cmd_export)

    generate = sub.add_parser("generate", help="answer a prompt (about an image / audio) with an instruct stage's model")
    generate.add_argument("source", help="an instruct stage output directory, or PIPELINE.yaml with --stage")
    generate.add_argument("prompt", help="the question or instruction")
    generate.add_argument("--stage", default=None, help="with a pipeline file: the instruct stage to answer with")
    generate.add_argument("--image", default=None, help="an image file the prompt is about")
    generate.add_argument("--audio", default=None, help="an audio file the prompt is about")
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1: greedy)")
    generate.add_argument("--do-sample", action="store_true", help="sample each token instead of taking the most "
                                                                   "likely one (not with --num-beams > 1)")
    generate.add_argument("--temperature", type=float, default=1.0, help="with --do-sample: divides the logits "
                                                                         "(< 1 sharper, > 1 flatter)")
    generate.add_argument("--top-p", type=float, default=1.0, help="with --do-sample: sample from the smallest set "
                                                                   "of tokens whose probability reaches this")
    generate.add_argument("--seed", type=int, default=None, help="with --do-sample: seed of the sampling generator "
                                                                 "(the same seed, the same answer)")
    _add_store_args(generate, when="with a pipeline file, as the run had it: ")
    generate.set_defaults(handler=cmd_generate)

    for module in COMMAND_MODULES:
        try:  # a project's own `cluster` package on the path must not break `omniway run`
            add_commands = getattr(importlib.import_module(module), "add_commands", None)
        except ImportError:
            add_commands = None
        if add_commands is not None:
            add_commands(sub, sys.modules[__name__])
    return parser


def load_spec(args):
    """The pipeline of a command's ``add_pipeline_args`` arguments (file, --set, --workdir, --storage,
    --tracking-uri): every subcommand that takes a pipeline loads it through here."""
    from pipelines.config import load_pipeline

    return load_pipeline(args.pipeline, args.overrides, workdir=args.workdir,
                         tracking_uri=args.tracking_uri, storage=args.storage)


def cmd_run(args) -> int:
    from pipelines.runner import format_summary, run_pipeline

    spec = load_spec(args)
    report = run_pipeline(spec, only=args.only or None, from_=args.from_, to=args.to,
                          force=args.force, dry_run=args.dry_run, address=args.address,
                          verbose=args.verbose)
    if args.dry_run:
        return 0
    print()
    print(format_summary(report))
    if any(s.uses == "evaluate" for s in spec.stages.values()):
        from pipelines.evaluation.summary import evaluation_summary

        evaluations = evaluation_summary(spec)
        if evaluations:
            print("\n" + evaluations)
    ran = [r.name for r in report.results.values() if r.state == "ran"]
    if ran and report.tracking_uri:
        from pipelines.sync_metrics import UNSENT_FILE, unsent_outputs

        for name, m in unsent_outputs(spec, ran):
            with m.open(UNSENT_FILE) as f:
                n = sum(1 for line in f.read().decode().splitlines() if line.strip())
            print(f"\nomniway: {n} logged lines of stage {name!r} did not reach MLflow; its output keeps them "
                  f"({UNSENT_FILE}): `omniway sync-metrics {args.pipeline} --stage {name}` sends them")
    if report.tracking_uri and report.parent_run_id:
        from pipelines.tracking import runs_url, ui_command

        port = 5000
        print(f"\nMLflow: {ui_command(report.tracking_uri, port) or 'the tracking server ' + report.tracking_uri}"
              f"\n  (or `omniway ui {args.pipeline}`), then open {runs_url(report.tracking_uri, report.experiment_id, port)}"
              f"\n  run {report.parent_run_id} is this run; its stages are its child runs (expand it)")
    if report.ray_logs:
        print(f"\nRay's logs (all that Ray, Ray Train, Ray Data and DeepSpeed printed; `--verbose` shows it "
              f"here): {report.ray_logs}")
    for r in report.results.values():
        if r.state != "failed":
            continue
        where = f" and Ray's logs in {report.ray_logs} the worker's traceback" if report.ray_logs else ""
        print(f"\nomniway: stage {r.name!r} failed: {r.error}\n"
              f"  Its MLflow run {r.run_id} holds the error{where}; fix the cause and rerun: cached stages "
              f"are kept and only {r.name!r} and what depends on it run again.", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_ui(args) -> int:
    """`omniway ui PIPELINE`: the MLflow UI over the pipeline's tracking store, on 127.0.0.1."""
    import shlex
    import subprocess

    from pipelines.tracking import latest_pipeline_run, runs_url, ui_argv

    spec = load_spec(args)
    uri = spec.tracking_uri
    argv = ui_argv(uri, args.port)
    if argv is None:  # a tracking server: it is its own UI
        print(f"omniway ui: {uri} is a tracking server; open {runs_url(uri, None, args.port)}")
        return 0
    db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    if db is not None and not os.path.exists(db):
        print(f"omniway ui: no MLflow store at {db} yet: `omniway run {args.pipeline}` creates it", file=sys.stderr)
        return 1
    run = latest_pipeline_run(uri, spec.experiment)
    print(f"omniway ui: {shlex.join(argv)}")
    if run is None:
        print(f"  no run of pipeline {spec.name!r} in this store yet")
    else:
        print(f"  open {runs_url(uri, run['experiment_id'], args.port)}\n"
              f"  newest run: {run['name']} ({run['run_id']}, {run['status']}); expand it for its stages"
              f"\n  or straight to it: {runs_url(uri, run['experiment_id'], args.port, run['run_id'])}")
    sys.stdout.flush()
    try:
        return subprocess.call(argv)
    except KeyboardInterrupt:
        return 0


def cmd_status(args) -> int:
    from pipelines.runner import stage_status

    spec = load_spec(args)
    rows = stage_status(spec)
    cols = ["stage", "kind", "state", "key", "last_run", "mlflow_run_id", "why"]
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"\nstorage: {spec.storage}\nmlflow:  {spec.tracking_uri}")
    return 0


def cmd_stages(args) -> int:
    from pipelines.registry import all_kinds, load_modules
    from pipelines.typed import describe_fields

    load_modules(tuple(args.plugin))
    kinds = all_kinds()
    if not kinds:
        print("no stage kinds are registered")
    if args.kind is not None:
        if args.kind not in kinds:
            print(f"omniway stages: no stage kind {args.kind!r} (registered: {', '.join(sorted(kinds))})",
                  file=sys.stderr)
            return 2
        kind = kinds[args.kind]
        print(f"{kind.name}  (version {kind.version}, num_cpus {kind.num_cpus:g})  {kind.description}")
        _print_fields(kind.config, "    ")
        return 0
    for kind in kinds.values():
        print(f"{kind.name}  (version {kind.version}, num_cpus {kind.num_cpus:g})  {kind.description}")
        for name, tp, default, doc in describe_fields(kind.config):
            if len(default) > 60:  # a nested settings block: `omniway stages KIND` lists it
                default = default[:56] + " ...}" if default.startswith("{") else default[:57] + "..."
            print(f"    {name}: {tp} = {default}" + (f"  -- {doc}" if doc else ""))
    if kinds:
        print("\n`omniway stages KIND` shows one kind in full.")
    return 0


def _print_fields(cls, indent: str) -> None:
    """Every field of config dataclass ``cls`` with its whole ``Args:`` entry; a field that is itself a
    config dataclass (or a list of one) is listed below it, indented."""
    import dataclasses
    import textwrap
    import typing

    from pipelines.typed import describe_fields

    hints = typing.get_type_hints(cls)
    for name, tp, default, doc in describe_fields(cls, full=True):
        inner = hints[name]
        for arg in typing.get_args(inner) or ():
            if dataclasses.is_dataclass(arg):
                inner = arg
        nested = dataclasses.is_dataclass(inner)
        print(f"{indent}{name}: {tp}" + ("" if nested and default.startswith("{") else f" = {default}"))
        if doc:
            print(textwrap.fill(doc, width=110, initial_indent=indent + "    ", subsequent_indent=indent + "    "))
        if nested:
            _print_fields(inner, indent + "    ")


def cmd_export(args) -> int:
    from pipelines.export import ExportError, export

    try:
        result = export(args.source, args.fmt, args.out, stage=args.stage, overrides=args.overrides,
                        workdir=args.workdir, storage=args.storage)
    except ExportError as e:
        print(f"omniway export: {e}", file=sys.stderr)
        return 1
    print(f"exported {result.source} as {args.fmt}:")
    for path in result.files:
        print(f"  {path}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def cmd_generate(args) -> int:
    from pipelines.export import ExportError, resolve_stage
    from pipelines.generate import Assistant

    directory = args.source.rstrip("/")
    if os.path.isfile(args.source) and args.source.endswith((".yaml", ".yml")):
        if not args.stage:
            print("omniway generate: a pipeline file needs --stage NAME (the instruct stage)", file=sys.stderr)
            return 2
        try:
            root, directory = resolve_stage(args.source, args.stage, overrides=args.overrides, workdir=args.workdir,
                                            storage=args.storage)
        except ExportError as e:
            print(f"omniway generate: {e}", file=sys.stderr)
            return 1
        if "://" in root:
            print("omniway generate: the stage output lies on URI storage; export it first "
                  "(omniway export ... --out DIR) and give DIR", file=sys.stderr)
            return 1
    if args.temperature <= 0 or not 0 < args.top_p <= 1:
        print(f"omniway generate: --temperature must be > 0 (got {args.temperature}) and --top-p in (0, 1] "
              f"(got {args.top_p})", file=sys.stderr)
        return 2
    sampling = {}
    if args.do_sample:
        import torch

        generator = None if args.seed is None else torch.Generator().manual_seed(args.seed)
        sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, generator=generator)
    try:
        assistant = Assistant.load(directory)
        print(assistant.answer(args.prompt, image=args.image, audio=args.audio, max_new_tokens=args.max_new_tokens,
                               num_beams=args.num_beams, **sampling))
    except (FileNotFoundError, ValueError) as e:
        print(f"omniway generate: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipelines.allocator_env import apply_to_this_process

    apply_to_this_process()  # before numpy / pyarrow load: see pipelines/allocator_env.py
    args = build_parser().parse_args(argv)
    # Pipeline plugins are modules of the user's project: import them from the
    # current directory, as `python -m` would.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    handler = args.handler
    from pipelines.typed import ConfigError

    try:
        return handler(args)
    except ConfigError as e:
        print(f"omniway: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
