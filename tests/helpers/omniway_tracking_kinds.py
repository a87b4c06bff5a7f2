"""A stage kind that logs along the way what stages can log (metrics at several steps, a table with an image
column, an artifact it deletes right after), for the tests of tracking failures and `omniway sync-metrics`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipelines.registry import stage_kind


@dataclass
class LogConfig:
    steps: int = 3


@stage_kind("test-log", config=LogConfig, version="1",
            description="Log metrics per step, a table with an image and an artifact; write done.txt.")
def log_along(ctx):
    from PIL import Image

    steps = ctx.config.steps
    for step in range(1, steps + 1):
        ctx.log_metrics({"progress": step / steps}, step=step)
    ctx.log_table({"image": [Image.new("RGB", (8, 8), (255, 0, 0))], "colour": ["red"]}, "colours.json")
    path = os.path.join(ctx.scratch_dir(), "notes.txt")
    with open(path, "w") as f:
        f.write("written along the way\n")
    ctx.log_artifact(path, "notes")
    os.remove(path)  # the context took the file when it was logged
    with open(os.path.join(ctx.output_dir, "done.txt"), "w") as f:
        f.write(f"{steps} steps\n")
    return {"steps": steps}
