"""The evaluation results of a pipeline, read back from its evaluate stages' outputs: the closing summary of
`omniway run`, and `omniway report` (one run, or two side by side).

    omniway report pipelines/configs/demo.yaml
    omniway report demo.yaml --compare other.yaml              # the differences, b - a
    omniway report demo.yaml --compare-set evaluate.batch_size=16   # the same pipeline with overrides
"""

from __future__ import annotations

import json
import sys


def evaluate_outputs(spec, stages: list[str] | None = None) -> list[tuple[str, object]]:
    """(stage name, committed Manifest or None) of each evaluate stage at its current cache key."""
    from pipelines.runner import current_outputs

    return current_outputs(spec, stages or (), "evaluate")


def read_results(manifest) -> list[dict]:
    from pipelines.stages.evaluate import RESULTS_FILE

    with manifest.open(manifest.extra.get("results", RESULTS_FILE)) as f:
        return json.load(f)


def report_path(manifest) -> str:
    from pipelines.stages.evaluate import REPORT_FILE

    return manifest.path(manifest.extra.get("report", REPORT_FILE))


def evaluation_summary(spec, stages: list[str] | None = None) -> str:
    """The markdown table of every committed evaluate stage of ``spec`` and its report's path ("" if none)."""
    from pipelines.evaluation.tables import markdown_table

    parts = []
    for name, manifest in evaluate_outputs(spec, stages):
        if manifest is not None:
            parts.append(f"evaluation ({name}):\n\n{markdown_table(read_results(manifest))}\n\n"
                         f"report: {report_path(manifest)}")
    return "\n\n".join(parts)


def add_commands(sub, cli) -> None:
    """Add `report` to the `omniway` subparsers ``sub``; ``cli`` is `pipelines.cli`."""
    report = sub.add_parser("report", help="print the evaluation results of a pipeline, or of two side by side")
    cli.add_pipeline_args(report)
    report.add_argument("--stage", action="append", default=[], metavar="STAGE",
                        help="only this evaluate stage (repeatable; default: every one)")
    report.add_argument("--compare", default=None, metavar="PIPELINE",
                        help="a second pipeline file: its results beside these, with the differences")
    report.add_argument("--compare-set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="the second run is this pipeline (or --compare's) with these overrides")
    report.set_defaults(handler=cmd_report)


def cmd_report(args) -> int:
    from pipelines.cli import load_spec
    from pipelines.config import load_pipeline
    from pipelines.evaluation.tables import compare_table

    spec = load_spec(args)
    if not args.compare and not args.compare_set:
        text = evaluation_summary(spec, args.stage or None)
        if not text:
            print(f"omniway report: {spec.path}: no evaluate stage has an output for its current config; run "
                  f"`omniway run {args.pipeline}` first", file=sys.stderr)
            return 1
        print(text)
        return 0
    other = load_pipeline(args.compare or args.pipeline, args.overrides + args.compare_set, workdir=args.workdir,
                          tracking_uri=args.tracking_uri, storage=args.storage)
    a_name = args.pipeline
    b_name = (args.compare or args.pipeline) + "".join(f" --set {s}" for s in args.compare_set)
    sides = []
    for sp, name in ((spec, a_name), (other, b_name)):
        found = [(n, m) for n, m in evaluate_outputs(sp, args.stage or None)]
        missing = [n for n, m in found if m is None]
        if missing or not found:
            print(f"omniway report: {name}: evaluate stage(s) {missing or '(none)'} have no output for the current "
                  "config: run them first", file=sys.stderr)
            return 1
        sides.append([r for _, m in found for r in read_results(m)])
    print(compare_table(sides[0], sides[1], a_name, b_name))
    return 0
