"""A stage's scratch directories (`ctx.scratch_dir()`: plots, a tokenizer's training text)
are removed when the stage ends, whether it succeeded or raised."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from pipelines.execute import execute_stage
from pipelines.registry import stage_kind
from pipelines.storage import Storage

MADE: list[str] = []


@dataclass
class ScratchConfig:
    fail: bool = False


@stage_kind("test-scratch", config=ScratchConfig, version="1",
            description="Write into two scratch directories, then maybe fail.")
def scratch(ctx):
    for _ in range(2):
        path = ctx.scratch_dir()
        with open(os.path.join(path, "big.txt"), "w") as f:
            f.write("x" * 1000)
        MADE.append(path)
    with open(os.path.join(ctx.output_dir, "out.txt"), "w") as f:
        f.write("done")
    if ctx.config.fail:
        raise RuntimeError("the stage failed")
    return {"ok": 1}


@pytest.mark.parametrize("fail", [False, True])
def test_scratch_directories_are_removed_when_the_stage_ends(tmp_path, fail):
    MADE.clear()
    run = lambda: execute_stage(pipeline="t", stage="s", kind="test-scratch", key=f"k{fail}",  # noqa: E731
                                config=ScratchConfig(fail=fail), config_dict={}, inputs={},
                                storage=Storage(str(tmp_path)))
    if fail:
        with pytest.raises(RuntimeError, match="the stage failed"):
            run()
    else:
        assert run()["metrics"] == {"ok": 1}
        assert (tmp_path / "t" / "s" / "kFalse" / "out.txt").read_text() == "done"
    assert len(MADE) == 2
    assert not [p for p in MADE if os.path.exists(p)]
