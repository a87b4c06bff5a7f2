"""Stage graph: order, selection (`--only/--from/--to`) and the plan of a run.

The plan decides, per stage, before anything runs:
  cached  - an output exists for the stage's current cache key; nothing to do
  stale   - no output for the current key (config, code or an input changed)
  forced  - `--force` reruns it although it is cached (its new output replaces the old; training starts over)
  damaged - its output's files are not what its manifest lists (pipelines.integrity): rebuilt like a
            stale stage, the new output replacing the damaged one
  skipped - not selected by `--only/--from/--to`
A stage downstream of a stale one has no key yet (its inputs do not exist);
it is planned stale and its key is computed, and the cache checked again,
once its inputs are committed: a rerun that reproduces the same bytes leaves
it cached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipelines.config import PipelineSpec
from pipelines.registry import get_kind
from pipelines.storage import Storage
from pipelines.typed import ConfigError


def cache_key(kind: str, version: str, config: dict, inputs: dict[str, str]) -> str:
    """Hash of the stage kind, its code version, its resolved config and its inputs."""
    payload = json.dumps({"kind": kind, "version": version, "config": config, "inputs": inputs},
                         sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def topological_order(spec: PipelineSpec) -> list[str]:
    """Stages in dependency order; ties keep the order of the pipeline file."""
    order: list[str] = []
    done: set[str] = set()
    remaining = list(spec.stages)
    while remaining:
        for name in remaining:
            if all(n in done for n in spec.stages[name].needs):
                order.append(name)
                done.add(name)
                remaining.remove(name)
                break
        else:  # config validation rejects cycles; this guards direct callers
            raise ConfigError(f"{spec.path}: stages {remaining} form a cycle")
    return order


def _closure(spec: PipelineSpec, start: str, down: bool) -> set[str]:
    if down:
        edges = {n: [m for m, s in spec.stages.items() if n in s.needs] for n in spec.stages}
    else:
        edges = {n: list(s.needs) for n, s in spec.stages.items()}
    seen = {start}
    todo = [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def select(spec: PipelineSpec, only: list[str] | None = None, from_: str | None = None,
           to: str | None = None) -> set[str]:
    """The stages a run may execute."""
    for name in [*(only or []), *([from_] if from_ else []), *([to] if to else [])]:
        if name not in spec.stages:
            raise ConfigError(f"{spec.path}: no stage named {name!r} "
                              f"(stages: {', '.join(spec.stages)})")
    if only:
        if from_ or to:
            raise ConfigError("--only cannot be combined with --from/--to")
        return set(only)
    chosen = set(spec.stages)
    if from_:
        chosen &= _closure(spec, from_, down=True)
    if to:
        chosen &= _closure(spec, to, down=False)
    if not chosen:
        raise ConfigError(f"--from {from_} --to {to}: no stage lies between them")
    return chosen


@dataclass
class StagePlan:
    name: str
    kind: str
    state: str  # cached | stale | forced | damaged | skipped
    key: str | None
    reason: str
    manifest: dict | None = None  # the committed output, when there is one

    @property
    def runs(self) -> bool:
        return self.state in ("stale", "forced", "damaged")


def key_for(spec: PipelineSpec, name: str, fingerprints: dict[str, str]) -> str:
    stage = spec.stages[name]
    kind = get_kind(stage.uses)
    return cache_key(stage.uses, kind.version, stage.config_dict,
                     {n: fingerprints[n] for n in stage.needs})


def plan(spec: PipelineSpec, storage: Storage, selected: set[str] | None = None,
         force: bool = False, check: bool = True) -> dict[str, StagePlan]:
    """Each stage's state (see the module docs). ``check``: stat the files of existing outputs against their
    manifests (``pipelines.integrity``), so a damaged one is planned for rebuilding."""
    from pipelines.integrity import check_output, describe_damage

    selected = set(spec.stages) if selected is None else selected
    plans: dict[str, StagePlan] = {}
    fingerprints: dict[str, str] = {}  # stages whose output will exist unchanged
    for name in topological_order(spec):
        stage = spec.stages[name]
        pending = [n for n in stage.needs if n not in fingerprints]
        if pending:
            if name not in selected:
                plans[name] = StagePlan(name, stage.uses, "skipped", None,
                                        f"not selected; input {pending[0]} changes")
                continue
            missing = [n for n in pending if not plans[n].runs]
            if missing:
                up = missing[0]
                what = (f"whose output is {plans[up].reason.split('; ')[-1]}" if "damaged:" in plans[up].reason
                        else "which has no output for its current config")
                raise ConfigError(
                    f"stage {name!r} needs {up!r}, {what} and is not selected to run: run "
                    f"`omniway run {spec.path} --to {up}` first, or widen the selection")
            plans[name] = StagePlan(name, stage.uses, "forced" if force else "stale", None,
                                    "--force" if force else f"input {pending[0]} will be rebuilt")
            continue
        key = key_for(spec, name, fingerprints)
        manifest = storage.read_manifest(storage.output_dir(spec.name, name, key))
        damage = None
        if manifest is not None and check and not (force and name in selected):
            result = check_output(storage, storage.output_dir(spec.name, name, key), manifest)
            damage = describe_damage(result) if result.damaged else None
        if damage and name not in selected:
            plans[name] = StagePlan(name, stage.uses, "skipped", key, f"not selected; {damage}", manifest)
            continue  # downstream of it waits for a rebuild: its fingerprint is not trusted
        if damage:
            plans[name] = StagePlan(name, stage.uses, "damaged", key, damage, manifest)
            continue
        if name not in selected:
            state, reason = "skipped", "not selected"
        elif manifest is None:
            state = "stale"
            previous = storage.list_keys(spec.name, name)
            reason = "never run" if not previous else "config, code or inputs changed"
        elif force:
            state, reason = "forced", "--force"
        else:
            state, reason = "cached", "up to date"
        plans[name] = StagePlan(name, stage.uses, state, key, reason, manifest)
        if manifest is not None and state in ("cached", "skipped"):
            fingerprints[name] = manifest["fingerprint"]
    return plans
