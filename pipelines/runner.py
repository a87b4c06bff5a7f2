"""Run a pipeline: plan, then execute stale stages as Ray tasks, tracking each in MLflow.

Stages whose inputs are committed run concurrently (up to
`ray.max_parallel_stages`). When a stage fails the runner starts nothing new,
lets running stages finish and commit, and reports the failure by stage name;
outputs of finished stages stay cached for the next run. A run in which every
selected stage is cached starts neither Ray nor MLflow: it only reads manifests.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field

from pipelines.config import PipelineSpec
from pipelines.dag import StagePlan, key_for, plan, select, topological_order
from pipelines.integrity import check_output, describe_damage
from pipelines.manifest import Manifest
from pipelines.storage import Storage


@dataclass
class StageResult:
    name: str
    state: str  # ran | cached | failed | skipped | not-run
    key: str | None = None
    duration_s: float = 0.0
    run_id: str | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunReport:
    pipeline: str
    plans: dict[str, StagePlan]
    results: dict[str, StageResult]
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    ray_logs: str | None = None  # the Ray session's logs folder (what the quiet console left out)

    @property
    def ok(self) -> bool:
        return not any(r.state == "failed" for r in self.results.values())

    @property
    def failed(self) -> list[StageResult]:
        return [r for r in self.results.values() if r.state == "failed"]


def _now() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S")


def _short(metrics: dict, limit: int = 4) -> str:
    """A stage's key metrics for its end line and the summary: `loss` first, then top-level figures
    before nested ones (`contrast/audio_text/...`), at most ``limit``; counts print as integers."""
    def value(v) -> str:
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    items = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    items.sort(key=lambda kv: (kv[0] != "loss", "/" in kv[0]))  # stable: the stage's order otherwise
    return " ".join(f"{k}={value(v)}" for k, v in items[:limit])


def format_plan(plans: dict[str, StagePlan]) -> str:
    rows = [("stage", "kind", "state", "key", "why")]
    rows += [(p.name, p.kind, p.state, p.key or "(pending)", p.reason) for p in plans.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
                     for r in rows)


def _stage_task(*, plugins, pipeline, stage, kind, key, config_dict, inputs, storage_root,
                run_id, tracking_uri, forced=False, replace=False):
    """Body of a stage's Ray task. Takes plain data only: plugin modules that
    define a kind's config are imported here, before anything is rebuilt."""
    from pipelines.execute import execute_stage
    from pipelines.registry import get_kind, load_modules
    from pipelines.typed import from_dict

    load_modules(tuple(plugins))
    config = from_dict(get_kind(kind).config, config_dict, "with")
    storage = Storage(storage_root)
    manifests = {name: Manifest(dir=d, data=data, storage_uri=storage_root)
                 for name, (d, data) in inputs.items()}
    return execute_stage(pipeline=pipeline, stage=stage, kind=kind, key=key, config=config,
                         config_dict=config_dict, inputs=manifests, storage=storage,
                         run_id=run_id, tracking_uri=tracking_uri, plugins=tuple(plugins), forced=forced,
                         replace=replace)


def connect_ray(spec: PipelineSpec, address: str | None = None, verbose: bool = True) -> bool:
    """Attach to the cluster named by --address / RAY_ADDRESS / the pipeline, or
    start an embedded local one. Returns True when this call started Ray. Not ``verbose``: the
    console gets omniway's lines of the workers' output only (pipelines/ray_logging.py)."""
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or spec.ray.address
    runtime_env = ray_runtime_env(embedded=not target, dashboard=spec.ray.dashboard)
    if target:
        ray.init(address=target, log_to_driver=True, runtime_env=runtime_env)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in alive)
        print(f"omniway: attached to the Ray cluster at {target}: {len(alive)} nodes, {cpus:g} CPUs", flush=True)
    else:
        ray.init(num_cpus=spec.ray.num_cpus, num_gpus=spec.ray.num_gpus,
                 include_dashboard=spec.ray.dashboard, dashboard_host="127.0.0.1",
                 log_to_driver=True, runtime_env=runtime_env)
    if not verbose:
        from pipelines.ray_logging import quiet_console

        quiet_console()
    return True


# Where Ray puts a submitted job's own settings (`ray job submit --runtime-env`, a RayJob's
# runtimeEnvYAML) for the job's driver to merge with its `ray.init(runtime_env=...)`.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ray_runtime_env(*, embedded: bool, dashboard: bool) -> dict:
    """The job-level runtime env `connect_ray` gives `ray.init`: environment variables for
    every worker (allocators, progress bars, whether the cluster is the embedded one), and
    for an embedded Ray without a dashboard the logging set-up of pipelines/ray_logging.py.

    A variable the submitted job's runtime env already sets is left to it: Ray refuses a
    `ray.init` runtime env that repeats one (even with the same value), and the job's is the
    user's choice.
    """
    import json
    import sys

    from pipelines.allocator_env import allocator_env
    from pipelines.data.raycompat import FIXED_SIZE_ENV

    env_vars = allocator_env()  # the workers' allocators: see pipelines/allocator_env.py
    if not sys.stdout.isatty():
        # Progress bars are for terminals; in logs and CI they are noise.
        env_vars["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    if embedded:  # a local Ray of `num_cpus` that no autoscaler grows: see raycompat.task_pool
        env_vars[FIXED_SIZE_ENV] = "1"
    job = json.loads(os.environ.get(JOB_CONFIG_ENV) or "{}").get("runtime_env") or {}
    for key in job.get("env_vars") or {}:
        env_vars.pop(key, None)
    runtime_env: dict = {"env_vars": env_vars}
    if embedded and not dashboard:  # no State API: see pipelines/ray_logging.py
        runtime_env["worker_process_setup_hook"] = "pipelines.ray_logging.quiet_state_api_pollers"
    return runtime_env


def _error_text(exc: BaseException) -> str:
    """The user's error, not Ray's wrapping of it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if len(text) > 2000 else text


def run_pipeline(spec: PipelineSpec, *, only: list[str] | None = None, from_: str | None = None,
                 to: str | None = None, force: bool = False, dry_run: bool = False,
                 address: str | None = None, echo=print, verbose: bool = True) -> RunReport:
    """Plan, then run what is stale. ``verbose`` False (`omniway run` without --verbose): the console
    shows omniway's lines only, Ray's own output stays in its logs folder (``report.ray_logs``)."""
    storage = Storage(spec.storage)
    selected = select(spec, only, from_, to)
    plans = plan(spec, storage, selected, force)
    echo(f"omniway: pipeline {spec.name!r} ({len(plans)} stages) storage={storage.uri_root}")
    echo(format_plan(plans))
    results = {name: StageResult(name, "skipped" if p.state == "skipped" else "not-run", p.key)
               for name, p in plans.items()}
    report = RunReport(spec.name, plans, results, tracking_uri=spec.tracking_uri)
    if dry_run:
        return report
    to_run = [p for p in plans.values() if p.runs]
    if not to_run:
        for p in plans.values():
            if p.state == "cached":
                results[p.name] = StageResult(p.name, "cached", p.key,
                                              run_id=(p.manifest or {}).get("mlflow_run_id"),
                                              metrics=(p.manifest or {}).get("metrics", {}))
        echo("omniway: every selected stage is up to date; nothing to run")
        return report

    from pipelines.ray_logging import DriverLog

    driver_log = DriverLog()  # what the driver's ray / mlflow loggers say off the console
    if not verbose:
        driver_log.install()
    try:
        _run(spec, storage, plans, results, report, only, from_, to, force, address, echo, verbose, driver_log)
    finally:
        driver_log.uninstall()
    return report


def _run(spec, storage, plans, results, report, only, from_, to, force, address, echo, verbose, driver_log):
    """The tracked part of `run_pipeline`: the parent MLflow run, Ray, the stages."""
    from pipelines.ray_logging import ray_logs_dir
    from pipelines.tracking import PipelineTracker

    run_name = f"{spec.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    tracker = PipelineTracker(spec.tracking_uri, spec.experiment, run_name)
    report.parent_run_id = tracker.parent_id
    report.experiment_id = tracker.experiment_id
    tracker.log_pipeline(spec.resolved_yaml(), {
        "pipeline": spec.name, "selection.only": ",".join(only or []), "selection.from": from_ or "",
        "selection.to": to or "", "selection.force": force})
    if tracker.parent_id:  # else the tracker said why the run is not tracked
        echo(f"omniway: MLflow run {tracker.parent_id} ({spec.tracking_uri})")
    started_ray = False
    try:
        started_ray = connect_ray(spec, address, verbose=verbose)
        report.ray_logs = ray_logs_dir()
        if report.ray_logs:
            driver_log.write_to(report.ray_logs)
        _execute(spec, storage, plans, results, tracker, echo)
    except KeyboardInterrupt:
        tracker.finish(False)
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    tracker.finish(report.ok)


def _execute(spec, storage, plans, results, tracker, echo) -> None:
    import ray

    remote = ray.remote(_stage_task)
    # Ray's state API, used inside Ray Train (its placement-group cleaner), finds "the" cluster by
    # scanning the machine when RAY_ADDRESS is unset, and fails when several local clusters run; the
    # stage tasks and everything they start inherit this cluster's address instead.
    stage_env = {"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}
    order = topological_order(spec)
    manifests: dict[str, dict] = {n: p.manifest for n, p in plans.items()
                                  if p.manifest is not None and p.state in ("cached", "skipped")}
    waiting = [n for n in order if plans[n].state != "skipped"]
    running: dict = {}  # ObjectRef -> (stage, run_id, started)
    failed = False
    for name in list(waiting):
        storage.clean_tmp(spec.name, name)

    while waiting or running:
        if not failed:
            for name in list(waiting):
                stage = spec.stages[name]
                if len(running) >= max(1, spec.ray.max_parallel_stages):
                    break
                if any(n not in manifests for n in stage.needs):
                    continue
                waiting.remove(name)
                p = plans[name]
                key = key_for(spec, name, {n: manifests[n]["fingerprint"] for n in stage.needs})
                existing = storage.read_manifest(storage.output_dir(spec.name, name, key))
                damaged = p.state == "damaged"
                if existing is not None and p.state != "forced" and not damaged:
                    # the output is taken as an input now: its files are checked again (a stat each)
                    check = check_output(storage, storage.output_dir(spec.name, name, key), existing)
                    if check.damaged:
                        damaged = True
                        echo(f"[{_now()}] ! {name}: {describe_damage(check)}; rebuilding it")
                if existing is not None and p.state != "forced" and not damaged:
                    run_id = tracker.cache_hit(name, stage.uses, key, existing)
                    manifests[name] = existing
                    results[name] = StageResult(name, "cached", key, run_id=run_id,
                                                metrics=existing.get("metrics", {}))
                    echo(f"[{_now()}] = {name}: cached (key {key})")
                    continue
                run_id = tracker.start_stage(name, stage.uses, key, stage.config_dict)
                kind_cpus = _kind_cpus(stage.uses)
                options = {"num_cpus": stage.resources.num_cpus if stage.resources.num_cpus
                           is not None else kind_cpus, "num_gpus": stage.resources.num_gpus,
                           "max_retries": 0, "name": f"omniway:{spec.name}:{name}",
                           "runtime_env": stage_env}
                ref = remote.options(**options).remote(
                    plugins=list(spec.plugins), pipeline=spec.name, stage=name, kind=stage.uses,
                    key=key, config_dict=stage.config_dict,
                    inputs={n: (storage.output_dir(spec.name, n, manifests[n]["key"]), manifests[n])
                            for n in stage.needs},
                    storage_root=storage.uri_root if not storage.local else storage.root,
                    run_id=run_id, tracking_uri=spec.tracking_uri, forced=p.state == "forced",
                    replace=p.state == "forced" or (damaged and existing is not None))
                running[ref] = (name, key, run_id, time.time())
                echo(f"[{_now()}] > {name} ({stage.uses}) started, key {key}, {_run_ref(run_id)}")
        if not running:
            if waiting and (failed or not _any_ready(spec, waiting, manifests)):
                for name in waiting:
                    results[name] = StageResult(name, "not-run", plans[name].key,
                                                error="an upstream stage failed" if failed else None)
                break
            continue
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            name, key, run_id, started = running.pop(ref)
            duration = time.time() - started
            try:
                manifest = ray.get(ref)
            except Exception as exc:  # the stage raised (or its worker died)
                failed = True
                error = _error_text(exc)
                import traceback

                detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
                tracker.fail_stage(run_id, f"{error}\n\n{detail}")
                results[name] = StageResult(name, "failed", key, duration, run_id, error=error)
                echo(f"[{_now()}] x {name} FAILED after {duration:.1f}s: {error}")
                continue
            manifests[name] = manifest
            tracker.finish_stage(run_id, manifest)
            results[name] = StageResult(name, "ran", key, duration, run_id,
                                        metrics=manifest.get("metrics", {}))
            echo(f"[{_now()}] + {name} done in {duration:.1f}s  {_short(manifest.get('metrics', {}))}"
                 f"  ({_run_ref(run_id)})")


def _any_ready(spec, waiting, manifests) -> bool:
    return any(all(n in manifests for n in spec.stages[w].needs) for w in waiting)


def _kind_cpus(kind: str) -> float:
    from pipelines.registry import get_kind

    return get_kind(kind).num_cpus


def format_summary(report: RunReport) -> str:
    rows = [("stage", "result", "time", "key", "mlflow run", "metrics")]
    for r in report.results.values():
        rows.append((r.name, r.state, f"{r.duration_s:.1f}s" if r.duration_s else "-",
                     r.key or "-", r.run_id or "-", r.error or _short(r.metrics)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5]
                     for row in rows)


def _run_ref(run_id: str | None) -> str:
    """How a stage line names its MLflow run; an untracked stage keeps what it logged in its output."""
    return f"MLflow run {run_id}" if run_id else "untracked (its metrics are kept in its output)"


def current_outputs(spec: PipelineSpec, stages=(), kind: str | None = None) -> list[tuple[str, Manifest | None]]:
    """(stage name, its committed output at its current cache key, or None) of the pipeline's stages (of
    ``kind``, among ``stages`` when given), in pipeline order. A damaged output (``pipelines.integrity``) is
    None, and said so on stderr."""
    storage = Storage(spec.storage)
    plans = plan(spec, storage, set(spec.stages))
    names = [n for n, s in spec.stages.items() if (kind is None or s.uses == kind) and (not stages or n in stages)]
    out = []
    for n in names:
        p = plans[n]
        if p.state == "damaged":  # its files are not what its manifest lists: nothing may read them
            import sys

            print(f"omniway: stage {n!r}'s output is {p.reason}: it is not read; `omniway run {spec.path}` "
                  "rebuilds it", file=sys.stderr)
        out.append((n, Manifest(dir=storage.output_dir(spec.name, n, p.key), data=p.manifest, storage_uri=spec.storage)
                    if p.manifest and p.state != "damaged" else None))
    return out


def stage_status(spec: PipelineSpec) -> list[dict]:
    """Per stage: state, current key, last run time and MLflow run id. Reads manifests only."""
    storage = Storage(spec.storage)
    plans = plan(spec, storage, set(spec.stages), False)
    rows = []
    for name, p in plans.items():
        manifest = p.manifest
        last = manifest
        if last is None:  # the newest output of an older key, if any
            candidates = [storage.read_manifest(storage.output_dir(spec.name, name, k))
                          for k in storage.list_keys(spec.name, name)]
            candidates = [c for c in candidates if c]
            last = max(candidates, key=lambda c: c.get("created_at", ""), default=None)
        rows.append({
            "stage": name, "kind": p.kind,
            "state": "damaged" if "damaged:" in p.reason else
                     "cached" if p.state in ("cached", "skipped") and manifest else "stale",
            "key": p.key or "(pending)", "why": p.reason.split("; ")[-1] if not manifest or "damaged:" in p.reason
                     else "up to date",
            "last_run": (last or {}).get("created_at", "never"),
            "last_key": (last or {}).get("key", "-"),
            "mlflow_run_id": (last or {}).get("mlflow_run_id") or "-",
            "output": storage.output_dir(spec.name, name, p.key) if manifest else "-",
        })
    return rows
