"""Pipeline files: YAML loaded strictly into typed specs, with `--set` overrides.

    name: demo                      # default: the file name without .yaml
    storage: .omniway/storage       # local path or pyarrow.fs URI (default: <workdir>/storage)
    tracking_uri: null              # default: sqlite:///<workdir>/mlflow.db
    ray: {num_cpus: 2}              # embedded local Ray; or address: ray://... / auto
    plugins: [my_project.stages]    # modules that register extra stage kinds
    stages:
      corpus:
        uses: corpus                # a registered stage kind
        with: {...}                 # that kind's config (strict)
      tokenizer:
        uses: text-tokenizer
        needs: [corpus]             # upstream stages
        resources: {num_cpus: 1}    # optional: the stage task's Ray resources

Every problem (unknown key, missing key, wrong type, unknown kind or stage,
cycle) raises `ConfigError` naming the file, the stage and the key before any
work starts.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.registry import UnknownStageKind, all_kinds, get_kind, load_modules
from pipelines.typed import ConfigError, convert, from_dict, to_dict

TOP_LEVEL_KEYS = ("name", "storage", "tracking_uri", "experiment", "ray", "plugins", "stages")
STAGE_KEYS = ("uses", "needs", "with", "resources")


@dataclass
class RayOptions:
    """How the runner attaches to Ray.

    Args:
        address: an existing cluster (`auto`, `HOST:PORT`, `ray://...`); None starts
            an embedded local Ray unless RAY_ADDRESS or --address says otherwise.
        num_cpus: CPUs of the embedded local Ray (None: all of this machine's).
        num_gpus: GPUs of the embedded local Ray (None: detected).
        dashboard: start the dashboard of the embedded Ray, bound to 127.0.0.1.
        max_parallel_stages: independent stages running at the same time.
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    dashboard: bool = False
    max_parallel_stages: int = 4


@dataclass
class StageResources:
    """Ray resources of the task that runs a stage (None: the kind's default)."""

    num_cpus: float | None = None
    num_gpus: float = 0.0


@dataclass
class StageSpec:
    """One stage of a loaded pipeline.

    Args:
        name: the stage's name in the pipeline.
        uses: its registered kind.
        needs: upstream stage names.
        config: the kind's config dataclass, resolved (what upstream stages fix is filled in).
        resources: Ray resources of the stage's task.
        facts: what its output will be like, for the stages below it (the kind's `resolve` says).
    """

    name: str
    uses: str
    needs: list[str]
    config: Any
    resources: StageResources
    facts: dict = field(default_factory=dict)

    @property
    def config_dict(self) -> dict:
        return to_dict(self.config)


@dataclass
class PipelineSpec:
    name: str
    path: str
    storage: str
    tracking_uri: str
    experiment: str
    ray: RayOptions
    plugins: list[str]
    stages: dict[str, StageSpec] = field(default_factory=dict)

    def resolved(self) -> dict:
        """The pipeline as plain data with every default filled in (saved with each run)."""
        return {
            "name": self.name,
            "storage": self.storage,
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "ray": to_dict(self.ray),
            "plugins": list(self.plugins),
            "stages": {
                s.name: {"uses": s.uses, "needs": list(s.needs), "with": s.config_dict,
                         "resources": to_dict(s.resources)}
                for s in self.stages.values()
            },
        }

    def resolved_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.resolved(), sort_keys=False)


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_path(data: dict, keys: list[str], value: Any, what: str) -> None:
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {what}: {k!r} is not a mapping")
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """Apply `STAGE.KEY=VALUE` (into the stage's `with`) or `TOPKEY[.SUB]=VALUE`."""
    raw = copy.deepcopy(raw)
    stages = raw.get("stages") or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: --set {item!r}: expected STAGE.KEY=VALUE")
        target, text = item.split("=", 1)
        keys = [k for k in target.strip().split(".") if k]
        value = _parse_value(text)
        if keys and keys[0] in stages and len(keys) > 1:
            stage = stages[keys[0]]
            if not isinstance(stage, dict):
                raise ConfigError(f"{source}: stage {keys[0]!r}: expected a mapping")
            rest = keys[1:]
            if rest[0] in ("needs", "uses", "resources", "with"):
                if rest[0] == "with":
                    rest = rest[1:]
                    if not rest:
                        raise ConfigError(f"--set {item}: name a key inside 'with'")
                else:
                    _set_path(stage, rest, value, item)
                    continue
            stage.setdefault("with", {})
            if stage["with"] is None:
                stage["with"] = {}
            _set_path(stage["with"], rest, value, item)
        elif keys and keys[0] in TOP_LEVEL_KEYS and keys[0] != "stages":
            _set_path(raw, keys, value, item)
        else:
            raise ConfigError(f"{source}: --set {item!r}: no stage named {keys[0] if keys else ''!r} "
                              f"(stages: {', '.join(stages) or 'none'})")
    return raw


def _check_graph(stages: dict[str, StageSpec], source: str) -> None:
    for s in stages.values():
        for n in s.needs:
            if n not in stages:
                raise ConfigError(f"{source}: stage {s.name!r}: needs: unknown stage {n!r} "
                                  f"(stages: {', '.join(stages)})")
    # Depth-first search for a cycle; report it as a path.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for n in stages[name].needs:
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise ConfigError(f"{source}: stage {name!r}: needs: cycle {' -> '.join(cycle)}")
            if n not in state:
                visit(n)
        stack.pop()
        state[name] = 2

    for name in stages:
        if name not in state:
            visit(name)


def _resolve(stages: dict[str, StageSpec], source: str) -> None:
    """Run every kind's `resolve` hook, upstream stages first (see `pipelines.registry`)."""
    done: set[str] = set()
    while len(done) < len(stages):  # the graph is acyclic (checked before)
        for name, spec in stages.items():
            if name in done or any(n not in done for n in spec.needs):
                continue
            kind = get_kind(spec.uses)
            if kind.resolve is not None:
                inputs = {n: stages[n] for n in spec.needs}
                spec.config, facts = kind.resolve(spec.config, inputs, f"{source}: stage {name!r}")
                spec.facts = dict(facts or {})
            done.add(name)


def _yaml_cache_path(path: Path, workdir: str) -> Path:
    import hashlib

    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return Path(workdir) / "cache" / "pipelines" / f"{path.stem}-{digest}.json"


def _read_yaml(path: Path, workdir: str) -> tuple[object, bool]:
    """The parsed pipeline file, from a JSON copy when the file is unchanged.

    Importing and running PyYAML costs about as much as the rest of a fully
    cached `omniway run`; the copy is keyed by the sha256 of the file's bytes.
    Returns (data, came_from_cache).
    """
    import hashlib
    import json

    text = path.read_bytes()
    digest = hashlib.sha256(text).hexdigest()
    cache = _yaml_cache_path(path, workdir)
    try:
        cached = json.loads(cache.read_text())
        if cached["sha256"] == digest:
            return cached["data"], True
    except (OSError, ValueError, KeyError):
        pass
    import yaml

    try:
        return yaml.safe_load(text.decode()), False
    except yaml.YAMLError as e:
        raise ConfigError(f"{path.name}: not valid YAML: {e}") from None


def _write_yaml_cache(path: Path, workdir: str, data: object) -> None:
    import hashlib
    import json

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = _yaml_cache_path(path, workdir)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sha256": digest, "data": data}))
        os.replace(tmp, cache)
    except (OSError, TypeError, ValueError):
        pass  # only a speed-up: YAML with non-JSON values (dates) just is not cached


def load_pipeline(path: str | os.PathLike, overrides: list[str] | None = None, *,
                  workdir: str = ".omniway", tracking_uri: str | None = None,
                  storage: str | None = None) -> PipelineSpec:
    """Load, override, type-check and validate a pipeline file."""
    path = Path(path)
    source = path.name
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    raw, cached = _read_yaml(path, workdir)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    spec = pipeline_from_dict(apply_overrides(raw, overrides or [], source), source=source,
                              default_name=path.stem, path=str(path), workdir=workdir,
                              tracking_uri=tracking_uri, storage=storage)
    if not cached:  # written only for files that validated
        _write_yaml_cache(path, workdir, raw)
    return spec


def pipeline_from_dict(raw: dict, *, source: str, default_name: str, path: str = "",
                       workdir: str = ".omniway", tracking_uri: str | None = None,
                       storage: str | None = None) -> PipelineSpec:
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{source}: {key}: unknown key (known keys: {', '.join(TOP_LEVEL_KEYS)})")

    def typed(tp, key, default):
        try:
            return convert(tp, raw.get(key, default), key)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    name = typed(str, "name", default_name)
    plugins = typed(list[str], "plugins", [])
    try:
        ray_opts = from_dict(RayOptions, raw.get("ray"), "ray")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        load_modules(plugins)
    except ImportError as e:
        raise ConfigError(f"{source}: plugins: cannot import {e.name or e}: {e}") from None

    workdir_abs = str(Path(workdir).expanduser().resolve())
    storage_root = storage or typed(str | None, "storage", None) or f"{workdir_abs}/storage"
    tracking = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or typed(str | None, "tracking_uri", None) or f"sqlite:///{workdir_abs}/mlflow.db")
    experiment = typed(str | None, "experiment", None) or name

    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, dict) or not raw_stages:
        raise ConfigError(f"{source}: stages: required mapping of stage name -> stage is missing or empty")
    stages: dict[str, StageSpec] = {}
    for stage_name, body in raw_stages.items():
        where = f"{source}: stage {stage_name!r}"
        if not isinstance(stage_name, str) or not stage_name or "/" in stage_name or stage_name.startswith("_"):
            raise ConfigError(f"{where}: a stage name is a non-empty string without '/' that "
                              "does not start with '_'")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping with uses/needs/with")
        for key in body:
            if key not in STAGE_KEYS:
                raise ConfigError(f"{where}: {key}: unknown key (known keys: {', '.join(STAGE_KEYS)})")
        if "uses" not in body:
            raise ConfigError(f"{where}: uses: required key is missing")
        try:
            uses = convert(str, body["uses"], "uses")
            needs = convert(list[str], body.get("needs") or [], "needs")
            resources = from_dict(StageResources, body.get("resources"), "resources")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        try:
            kind = get_kind(uses)
        except UnknownStageKind:
            raise ConfigError(f"{where}: uses: unknown stage kind {uses!r} "
                              f"(registered: {', '.join(all_kinds()) or 'none'})") from None
        try:
            config = from_dict(kind.config, body.get("with"), "with")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if len(set(needs)) != len(needs):
            raise ConfigError(f"{where}: needs: lists a stage twice: {needs}")
        stages[stage_name] = StageSpec(stage_name, uses, needs, config, resources)
    _check_graph(stages, source)
    _resolve(stages, source)
    return PipelineSpec(name=name, path=path, storage=storage_root, tracking_uri=tracking,
                        experiment=experiment, ray=ray_opts, plugins=plugins, stages=stages)
