"""A commit to `pyarrow.fs` URI storage (`file://`, as s3:// or gs:// would be) records in the manifest the
mtimes the filesystem reports for the uploaded copies, not the local files': the first check after the
commit hashes nothing; a touched file is hashed once (then trusted by its new mtime), a changed one is
damaged."""

from __future__ import annotations

import os

from pipelines.integrity import check_output
from pipelines.manifest import describe_files
from pipelines.storage import Storage


def test_a_check_right_after_a_commit_to_uri_storage_hashes_nothing(tmp_path):
    storage = Storage(f"file://{tmp_path}/remote")
    work = storage.new_work_dir("p", "s", "k")
    os.makedirs(os.path.join(work, "train"))
    for rel in ("a.txt", "train/part-00000.txt"):
        with open(os.path.join(work, rel), "w") as f:
            f.write(f"the bytes of {rel}\n")
    local = {e["path"]: e["mtime_ns"] for e in describe_files(work)}
    out = storage.output_dir("p", "s", "k")
    assert storage.commit(work, out, {"files": describe_files(work)})
    manifest = storage.read_manifest(out)
    remote = {e["path"]: storage.file_state(f"{out}/{e['path']}")[1] for e in manifest["files"]}
    assert {e["path"]: e["mtime_ns"] for e in manifest["files"]} == remote != local
    check = check_output(storage, out, manifest)
    assert (check.files, check.hashed, check.damaged) == (2, 0, [])

    touched = f"{tmp_path}/remote/p/s/k/a.txt"
    os.utime(touched, ns=(remote["a.txt"] + 5_000_000_000,) * 2)  # the same bytes, a new mtime
    check = check_output(storage, out, storage.read_manifest(out))
    assert (check.hashed, check.damaged) == (1, [])
    assert check_output(storage, out, storage.read_manifest(out)).hashed == 0  # its new mtime is recorded
    with open(touched, "w") as f:  # another byte, the same size
        f.write("THE bytes of a.txt\n")
    check = check_output(storage, out, storage.read_manifest(out))
    assert check.hashed == 1 and check.damaged == ["a.txt (sha256 differs from the manifest's)"]
