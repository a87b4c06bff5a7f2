"""`omniway submit` and `omniway jobs`: pipeline runs as Ray Jobs on a cluster (the Ray Jobs client).

The job's entrypoint is the same `omniway run` a user types locally, started
with `python -m pipelines.cli` so it works whether omniway is installed on the
cluster or shipped in the working directory. The two subcommands are added to
the `omniway` command line by `add_commands`, which the CLI finds through its
`COMMAND_MODULES` (pipelines imports nothing of cluster/: the direction is
cluster -> pipelines).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

# Never shipped to the cluster: environments, caches, local outputs.
WORKING_DIR_EXCLUDES = [".venv", ".git", ".omniway", "__pycache__", "*.egg-info",
                        ".pytest_cache", "mlruns", "mlartifacts", "*.db"]


def add_commands(sub, cli) -> None:
    """Add `submit` and `jobs` to the `omniway` subparsers ``sub``; ``cli`` is `pipelines.cli` (its
    shared argument groups)."""
    submit = sub.add_parser("submit", help="submit `omniway run` to a Ray cluster as a Ray Job")
    cli.add_pipeline_args(submit)
    cli.add_selection_args(submit)
    submit.add_argument("--address", required=True,
                        help="Ray Jobs address of the head, e.g. http://127.0.0.1:8265")
    submit.add_argument("--working-dir", default=".",
                        help="directory shipped to the cluster as the job's working dir (default: .)")
    submit.add_argument("--wait", action="store_true",
                        help="stream the job's logs and exit with its outcome")
    submit.set_defaults(handler=submit_run)

    jobs = sub.add_parser("jobs", help="list, follow or stop submitted runs")
    jobs.add_argument("action", choices=["list", "logs", "stop", "status"])
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("--address", default=os.environ.get("RAY_JOBS_ADDRESS", "http://127.0.0.1:8265"))
    jobs.add_argument("--follow", action="store_true", help="with logs: stream until the job ends")
    jobs.set_defaults(handler=jobs_command)


def build_entrypoint(args, workdir_abs: str) -> str:
    parts = ["python", "-m", "pipelines.cli", "run", args.pipeline, "--workdir", workdir_abs]
    for item in args.overrides:
        parts += ["--set", item]
    if args.storage:
        parts += ["--storage", args.storage]
    if args.tracking_uri:
        parts += ["--tracking-uri", args.tracking_uri]
    for name in args.only:
        parts += ["--only", name]
    if args.from_:
        parts += ["--from", args.from_]
    if args.to:
        parts += ["--to", args.to]
    if args.force:
        parts.append("--force")
    if args.dry_run:
        parts.append("--dry-run")
    return " ".join(shlex.quote(p) for p in parts)


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit_run(args) -> int:
    from pipelines.config import load_pipeline

    # Validate here, before anything reaches the cluster: a config error should
    # cost the user a second, not a job.
    load_pipeline(args.pipeline, args.overrides, workdir=args.workdir,
                  tracking_uri=args.tracking_uri, storage=args.storage)
    working_dir = str(Path(args.working_dir).resolve())
    pipeline_path = Path(args.pipeline).resolve()
    try:
        args.pipeline = str(pipeline_path.relative_to(working_dir))
    except ValueError:
        print(f"omniway: the pipeline file {pipeline_path} must lie inside --working-dir "
              f"{working_dir}, which is what the cluster receives", file=sys.stderr)
        return 2
    # The default workdir is this machine's absolute path: right when the head
    # runs here or shares the filesystem; pass --workdir/--storage/--tracking-uri
    # with shared locations for a remote cluster.
    workdir_abs = str(Path(args.workdir).expanduser().resolve())
    entrypoint = build_entrypoint(args, workdir_abs)
    env_vars = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI",) if k in os.environ}
    client = _client(args.address)
    # A head that has just started answers "No available agent to submit job"
    # until its job agent is up: retry that for a while instead of failing.
    deadline = time.time() + 120
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env={"working_dir": working_dir, "excludes": WORKING_DIR_EXCLUDES,
                             "env_vars": env_vars},
                metadata={"omniway.pipeline": args.pipeline})
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2.0)
    print(f"omniway: submitted {job_id} to {args.address}")
    print(f"  follow: omniway jobs logs {job_id} --address {args.address} --follow")
    if not args.wait:
        return 0
    return _follow(client, job_id)


def _follow(client, job_id: str) -> int:
    from ray.job_submission import JobStatus

    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status.is_terminal():
            break
        time.sleep(1.0)
    info = client.get_job_info(job_id)
    print(f"omniway: job {job_id} {info.status}" + (f": {info.message}" if info.message else ""))
    return 0 if info.status == JobStatus.SUCCEEDED else 1


def jobs_command(args) -> int:
    client = _client(args.address)
    if args.action == "list":
        rows = [("job id", "status", "entrypoint")]
        for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            rows.append((job.submission_id or job.job_id or "-", str(job.status), job.entrypoint))
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        for r in rows:
            print(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}")
        return 0
    if not args.job_id:
        print(f"omniway jobs {args.action}: name a job id", file=sys.stderr)
        return 2
    if args.action == "logs":
        if args.follow:
            return _follow(client, args.job_id)
        sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    if args.action == "status":
        info = client.get_job_info(args.job_id)
        print(f"{args.job_id}  {info.status}  {info.message or ''}".rstrip())
        return 0
    stopped = client.stop_job(args.job_id)
    print(f"omniway: {'stopping' if stopped else 'not running:'} {args.job_id}")
    return 0
