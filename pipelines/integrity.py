"""Stage outputs checked against their manifests (DVC's cache check, `git fsck`).

Every manifest lists each file's size, sha256 and modification time (``mtime_ns``) at commit. Before a
cached output is used (planning, `status`, `--dry-run`, and when the runner takes a cached input) each file
is stat-ed only: a file whose size and mtime match is taken as it was. One whose mtime differs is hashed
again: the same sha256 means it was touched, not changed (the recorded mtime is refreshed); a different
hash, another size or a missing file makes the output ``damaged``, and `omniway run` rebuilds that stage
like a stale one before anything downstream reads it. `omniway verify` hashes every file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class OutputCheck:
    """The result of checking one stage output.

    Args:
        damaged: "path (why)" for every file that is not what the manifest says.
        files: files checked.
        bytes: their recorded size in all.
        hashed: files read and hashed (all of them for a deep check).
    """

    damaged: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    hashed: int = 0


def check_output(storage, output_dir: str, manifest: dict, *, deep: bool = False) -> OutputCheck:
    """Check ``output_dir``'s files against ``manifest`` (see the module docs); ``deep`` hashes every file.
    A touched but unchanged file gets its new mtime written into the manifest."""
    result = OutputCheck()
    refreshed = False
    for entry in manifest.get("files", []):
        path = f"{output_dir}/{entry['path']}"
        result.files += 1
        result.bytes += int(entry["size"])
        state = storage.file_state(path)
        if state is None:
            result.damaged.append(f"{entry['path']} (missing)")
            continue
        size, mtime_ns = state
        if size != entry["size"]:
            result.damaged.append(f"{entry['path']} (size {size}, the manifest says {entry['size']})")
            continue
        if not deep and mtime_ns == entry.get("mtime_ns"):
            continue
        result.hashed += 1
        if storage.sha256(path) != entry["sha256"]:
            result.damaged.append(f"{entry['path']} (sha256 differs from the manifest's)")
        elif entry.get("mtime_ns") != mtime_ns:
            entry["mtime_ns"] = mtime_ns
            refreshed = True
    if refreshed and not result.damaged:
        storage.write_manifest(output_dir, manifest)
    return result


def describe_damage(check: OutputCheck, limit: int = 3) -> str:
    more = len(check.damaged) - limit
    return "damaged: " + ", ".join(check.damaged[:limit]) + (f" and {more} more" if more > 0 else "")


# -- omniway verify ---------------------------------------------------------------------------------------
def add_commands(sub, cli) -> None:
    """Add `verify` to the `omniway` subparsers ``sub``; ``cli`` is `pipelines.cli`."""
    verify = sub.add_parser("verify", help="re-hash every file of the stage outputs against their manifests")
    cli.add_pipeline_args(verify)
    verify.add_argument("--stage", action="append", default=[], metavar="STAGE",
                        help="only this stage (repeatable; default: every stage with an output)")
    verify.set_defaults(handler=cmd_verify)


def cmd_verify(args) -> int:
    from pipelines.cli import load_spec
    from pipelines.dag import plan
    from pipelines.storage import Storage
    from pipelines.typed import ConfigError

    spec = load_spec(args)
    unknown = [s for s in args.stage if s not in spec.stages]
    if unknown:
        raise ConfigError(f"{spec.path}: no stage named {unknown[0]!r} (stages: {', '.join(spec.stages)})")
    storage = Storage(spec.storage)
    plans = plan(spec, storage, set(spec.stages), check=False)
    rows = [("stage", "key", "files", "bytes", "damaged")]
    damaged_any = False
    for name, p in plans.items():
        if args.stage and name not in args.stage:
            continue
        if p.manifest is None:
            rows.append((name, p.key or "(pending)", "-", "-", "no output for the current config"))
            continue
        check = check_output(storage, storage.output_dir(spec.name, name, p.key), p.manifest, deep=True)
        damaged_any |= bool(check.damaged)
        rows.append((name, p.key, str(check.files), str(check.bytes), ", ".join(check.damaged) or "none"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    if damaged_any:
        print(f"\nomniway verify: damaged outputs; `omniway run {args.pipeline}` rebuilds them", file=sys.stderr)
    return 1 if damaged_any else 0
