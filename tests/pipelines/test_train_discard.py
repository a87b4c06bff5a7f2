"""A forced training stage starts over: ``fit(fresh=True)`` first deletes the Ray Train run it would resume,
and the forced output replaces the one committed for the key."""

from __future__ import annotations

import pytest

from pipelines.storage import Storage
from pipelines.train.launch import discard_run


def test_discard_run_deletes_only_that_run(tmp_path):
    root = tmp_path / "_train"
    (root / "k1" / "checkpoint_0001").mkdir(parents=True)
    (root / "k1" / "checkpoint_0001" / "state.pt").write_bytes(b"x")
    (root / "k2").mkdir()
    assert discard_run(str(root), "k1") is True
    assert not (root / "k1").exists() and (root / "k2").exists()  # another key's run is kept
    assert discard_run(str(root), "k1") is False  # nothing there: no error


def test_discard_run_through_a_filesystem_uri(tmp_path):
    (tmp_path / "k" / "c").mkdir(parents=True)
    assert discard_run(f"file://{tmp_path}", "k") is True
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("uri", [False, True], ids=["local", "filesystem-uri"])
def test_forced_commit_replaces_an_existing_output(tmp_path, uri):
    """A forced stage's new output (say, retrained weights) replaces the one for its key; an unforced
    second commit of the same key keeps the first."""
    storage = Storage(f"file://{tmp_path}/store" if uri else str(tmp_path / "store"))
    out = storage.output_dir("p", "s", "k")

    def commit(text: str, replace: bool) -> bool:
        work = storage.new_work_dir("p", "s", "k")
        with open(f"{work}/weights.txt", "w") as f:
            f.write(text)
        return storage.commit(work, out, {"v": text}, replace=replace)

    def current() -> str:
        return storage.read_manifest(out)["v"]

    assert commit("first", replace=False) and current() == "first"
    assert not commit("second", replace=False) and current() == "first"
    assert commit("third", replace=True) and current() == "third"
    with storage._fs.open_input_stream(f"{out}/weights.txt") if uri else open(f"{out}/weights.txt", "rb") as f:
        assert f.read() == b"third"
