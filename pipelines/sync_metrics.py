"""`omniway sync-metrics`: send what stages logged but MLflow did not take in time (``UNSENT_FILE`` in their
outputs, written by ``pipelines.train.metrics_sender``) to their MLflow runs, once."""

from __future__ import annotations

import json
import os
import shutil
import sys

from pipelines.train.metrics_sender import UNSENT_FILE, bounded_http, media_of, missing_media, send_line

# On the run the lines went to: "<sha256 of the unsent file, 16 hex>:<lines sent>". The committed output is
# not changed (its files are checked against its manifest), so a second sync reads what the first sent here.
TAG_SYNCED = "omniway.unsent_synced"
# On a run `sync-metrics` made for an output that has none (its run was not tracked): the output's fingerprint
TAG_SYNCED_OUTPUT = "omniway.unsent_of"


def add_commands(sub, cli) -> None:
    """Add `sync-metrics` to the `omniway` subparsers ``sub``; ``cli`` is `pipelines.cli`."""
    sync = sub.add_parser("sync-metrics", help="send what a stage logged but MLflow did not take in time "
                                               "(unsent_metrics.jsonl in its output) to its MLflow run")
    cli.add_pipeline_args(sync)
    sync.add_argument("--stage", action="append", default=[], metavar="STAGE",
                      help="only this stage (repeatable; default: every stage whose output keeps unsent metrics)")
    sync.set_defaults(handler=cmd_sync_metrics)


def unsent_outputs(spec, stages=()) -> list[tuple[str, object]]:
    """(stage name, Manifest) of the committed outputs (current keys) that keep an ``UNSENT_FILE``."""
    from pipelines.runner import current_outputs

    return [(n, m) for n, m in current_outputs(spec, stages)
            if m is not None and any(f["path"] == UNSENT_FILE for f in m.files)]


def _run_for(client, spec, name: str, m) -> str:
    """The MLflow run of output ``m``: its own, or (not tracked when it ran) the one an earlier sync made,
    or a new one in the pipeline's experiment with the stage's tags, config and metrics."""
    if m.mlflow_run_id:
        return m.mlflow_run_id
    from pipelines.tracking import (TAG_CACHE_HIT, TAG_KEY, TAG_KIND, TAG_STAGE, experiment_id, log_metrics,
                                    log_params)

    exp = experiment_id(client, spec.tracking_uri, spec.experiment)
    runs = client.search_runs([exp], filter_string=f"tags.`{TAG_SYNCED_OUTPUT}` = '{m.fingerprint}'", max_results=1)
    if runs:
        return runs[0].info.run_id
    run_id = client.create_run(exp, run_name=f"{name} (synced)", tags={
        TAG_STAGE: name, TAG_KIND: m.kind, TAG_KEY: m.key, TAG_CACHE_HIT: "false",
        TAG_SYNCED_OUTPUT: m.fingerprint}).info.run_id
    log_params(client, run_id, m.data.get("config", {}))
    log_metrics(client, run_id, m.metrics)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _media_dir(m, lines: list[dict], tmp: str) -> str:
    """Where the files the lines name are, as local files: the output itself, or (URI storage) ``tmp``."""
    if m.storage.local:
        return m.dir
    for item in lines:
        for rel in media_of(item):
            try:
                with m.open(rel) as src, open(os.path.join(tmp, rel), "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except FileNotFoundError:
                pass  # reported as the line is passed over
    return tmp


def sync_output(client, spec, name: str, m) -> bool:
    """Send the unsent lines of stage ``name``'s output ``m`` that no earlier sync sent; True when all of
    them are now in MLflow. A line whose files are gone is reported and passed over; a server that stops
    answering ends the sync there, and the next one goes on from the first line not sent."""
    import hashlib
    import tempfile

    with m.open(UNSENT_FILE) as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    lines = [json.loads(x) for x in raw.decode().splitlines() if x.strip()]
    run_id = _run_for(client, spec, name, m)
    mark = client.get_run(run_id).data.tags.get(TAG_SYNCED, "")
    done = int(mark.split(":")[1]) if mark.startswith(digest + ":") else 0
    if done >= len(lines):
        print(f"{name}: its {len(lines)} unsent lines reached MLflow run {run_id} in an earlier sync; nothing "
              "to send")
        return True
    sent, missing = done, 0
    try:
        with tempfile.TemporaryDirectory(prefix="omniway-sync-") as tmp:
            base = _media_dir(m, lines[done:], tmp)
            for item in lines[done:]:
                if not send_line(client, run_id, item, base):  # can never be sent: say so, go on
                    missing += 1
                    print(f"omniway sync-metrics: {name}: a {item['kind']} line was not sent: its files "
                          f"{missing_media(item, base)} are not in the output", file=sys.stderr)
                sent += 1
    except Exception as e:  # the server stopped answering (or refused a line): the next sync goes on here
        print(f"omniway sync-metrics: {name}: MLflow did not take line {sent + 1} of {len(lines)} "
              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); rerun to send the rest",
              file=sys.stderr)
    finally:
        if sent > done:
            client.set_tag(run_id, TAG_SYNCED, f"{digest}:{sent}")
    print(f"{name}: sent {sent - done - missing} of {len(lines) - done} lines to MLflow run {run_id}"
          + (f" ({done} were sent by an earlier sync)" if done else ""))
    return sent == len(lines) and not missing


def cmd_sync_metrics(args) -> int:
    from pipelines.cli import load_spec
    from pipelines.tracking import open_client

    spec = load_spec(args)
    found = unsent_outputs(spec, args.stage)
    if not found:
        print("omniway sync-metrics: no stage output keeps unsent metrics")
        return 0
    bounded_http()
    ok = True
    try:
        client = open_client(spec.tracking_uri)
        for name, m in found:
            ok &= sync_output(client, spec, name, m)
    except Exception as e:  # the server does not answer at all
        print(f"omniway sync-metrics: MLflow at {spec.tracking_uri} did not answer ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); nothing more was sent, rerun it later", file=sys.stderr)
        return 1
    return 0 if ok else 1
