"""Stage outputs checked against their manifests on a real embedded Ray: a same-size overwrite, a truncation,
a deletion and a touch of a committed file, as `status`, `--dry-run`, `run` and `verify` see them."""

from __future__ import annotations

import json
import os

import pytest

from conftest import diamond

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture
def built(project):
    path = project.write(diamond(project))
    code, _, err = project.cli("run", str(path))
    assert code == 0, err
    project.clear_log()
    return path, project.manifest_dirs("diamond", "a")[0] / "lines.txt"


def status_of(project, path, stage: str) -> str:
    code, out, err = project.cli("status", str(path))
    assert code == 0, err
    return next(line for line in out.splitlines() if line.startswith(stage + " "))


@pytest.mark.parametrize("damage, why", [
    (lambda f: f.write_bytes(f.read_bytes().upper()), "sha256 differs"),   # same size, other bytes
    (lambda f: f.write_bytes(f.read_bytes()[:5]), "size 5"),               # truncated
    (lambda f: f.unlink(), "missing"),                                     # deleted
])
def test_a_damaged_output_is_reported_and_rebuilt_before_anything_reads_it(project, built, damage, why):
    path, f = built
    original = f.read_bytes()
    damage(f)
    line = status_of(project, path, "a")
    assert " damaged " in line and f"lines.txt ({why}" in line, line
    assert " cached " in status_of(project, path, "b")
    code, out, _ = project.cli("run", str(path), "--dry-run")
    assert code == 0 and any(x.startswith("a ") and "damaged" in x for x in out.splitlines()), out
    code, out, err = project.cli("verify", str(path), "--workdir", str(project.workdir))
    assert code == 1 and "lines.txt" in out and why in out, out
    # one stage: only its row, and its exit status (b is intact, a is not)
    code, out, _ = project.cli("verify", str(path), "--stage", "b", "--workdir", str(project.workdir))
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:] if line.strip()] == ["b"], out
    code, out, _ = project.cli("verify", str(path), "--stage", "a", "--workdir", str(project.workdir))
    assert code == 1 and why in out and [line.split()[0] for line in out.splitlines()[1:] if line.strip()] == ["a"]
    code, out, err = project.cli("run", str(path))
    assert code == 0, err
    assert project.runs() == ["a"]  # rebuilt to the same bytes: c and d keep their cached outputs
    assert f.read_bytes() == original
    assert " cached " in status_of(project, path, "a")
    code, out, _ = project.cli("verify", str(path), "--workdir", str(project.workdir))
    assert code == 0 and all(line.rstrip().endswith("none") for line in out.splitlines()[1:] if line.strip()), out


def test_a_damaged_output_is_not_handed_to_readers_of_current_outputs(project, built, capsys):
    """`omniway report`, the evaluation summary and `sync-metrics` read outputs through `current_outputs`."""
    from pipelines.config import load_pipeline
    from pipelines.runner import current_outputs

    path, f = built
    spec = load_pipeline(str(path), workdir=str(project.workdir))
    assert all(m is not None for _, m in current_outputs(spec))
    f.write_bytes(f.read_bytes().upper())
    found = dict(current_outputs(spec))
    assert found["a"] is None and found["b"] is not None
    assert found["c"] is None  # its key depends on a's fingerprint, no longer trusted
    err = capsys.readouterr().err
    assert "stage 'a'" in err and "damaged: lines.txt (sha256 differs" in err and "rebuilds it" in err, err


def test_a_touched_but_unchanged_file_is_accepted_and_its_mtime_recorded(project, built):
    path, f = built
    manifest_path = f.parent / "_manifest.json"
    before = json.loads(manifest_path.read_text())["files"][0]["mtime_ns"]
    os.utime(f, ns=(before + 5_000_000_000, before + 5_000_000_000))
    assert " cached " in status_of(project, path, "a")
    after = json.loads(manifest_path.read_text())["files"][0]
    assert after["mtime_ns"] == before + 5_000_000_000  # hashed once, then trusted by its stat again
    code, _, err = project.cli("run", str(path))
    assert code == 0, err
    assert project.runs() == []


def test_a_stage_below_a_damaged_unselected_one_is_refused_with_the_reason(project, built):
    path, f = built
    f.write_bytes(f.read_bytes().upper())
    code, out, err = project.cli("run", str(path), "--only", "c", "--force")
    assert code == 2 and "needs 'a', whose output is damaged: lines.txt" in err, err
    assert project.runs() == []


def test_outputs_on_uri_storage_are_checked_through_the_filesystem(project):
    """`file://` storage goes through pyarrow.fs (as s3:// or gs:// would): the same stat, re-hash and rebuild.
    The commit records the mtimes the filesystem gives the uploaded files (test_storage_integrity.py)."""
    body = diamond(project)
    body["storage"] = f"file://{project.root}/remote-store"
    path = project.write(body)
    assert project.cli("run", str(path))[0] == 0
    (key_dir,) = [p for p in (project.root / "remote-store" / "diamond" / "a").iterdir() if not p.name.startswith("_")]
    f = key_dir / "lines.txt"
    assert " cached " in status_of(project, path, "a")
    recorded = json.loads((key_dir / "_manifest.json").read_text())["files"][0]["mtime_ns"]
    assert recorded == f.stat().st_mtime_ns  # the upload's mtime
    original = f.read_bytes()
    f.write_bytes(original.upper())
    assert " damaged " in status_of(project, path, "a")
    project.clear_log()
    assert project.cli("run", str(path))[0] == 0
    assert project.runs() == ["a"] and f.read_bytes() == original


def test_unsent_metrics_leave_the_fingerprint_alone_and_are_still_checked(project):
    """An output built while the tracking server was down keeps the metrics its stage logged
    (``UNSENT_FILE``): its fingerprint is a clean rebuild's, so what reads it stays cached; `verify` and
    `status` still check that file against the manifest."""
    import socket

    from pipelines.train.metrics_sender import UNSENT_FILE

    with socket.socket() as s:  # bound, never listening, closed: connecting is refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    path = project.write(diamond(project))
    code, out, err = project.cli("run", str(path), "--tracking-uri", dead)
    assert code == 0, err
    manifest = lambda stage: json.loads((project.manifest_dirs("diamond", stage)[0] / "_manifest.json").read_text())  # noqa: E731
    untracked = manifest("a")
    assert UNSENT_FILE in {f["path"] for f in untracked["files"]}  # test-emit logs a metric
    project.clear_log()
    code, out, err = project.cli("run", str(path), "--tracking-uri", project.tracking_uri, "--only", "a", "--force")
    assert code == 0, err
    clean = manifest("a")
    assert UNSENT_FILE not in {f["path"] for f in clean["files"]}  # sent this time
    assert clean["fingerprint"] == untracked["fingerprint"]
    code, out, err = project.cli("run", str(path), "--tracking-uri", project.tracking_uri)
    assert code == 0, err
    assert project.runs() == ["a"]  # c and d below it stayed cached
    unsent = project.manifest_dirs("diamond", "b")[0] / UNSENT_FILE  # b still keeps its unsent line
    unsent.write_bytes(unsent.read_bytes().upper())
    assert " damaged " in status_of(project, path, "b") and UNSENT_FILE in status_of(project, path, "b")
    code, out, _ = project.cli("verify", str(path), "--stage", "b", "--workdir", str(project.workdir))
    assert code == 1 and f"{UNSENT_FILE} (sha256 differs" in out, out
