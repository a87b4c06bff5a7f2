"""Small stage kinds the runner tests register through the pipeline `plugins:` key.

Every execution appends lines to `<log>` (a file outside storage), so a test
can count which stages really ran, and when, in which process and on which Ray node:
`<stage> <event> <unix time> <pid> [<Ray node id>]` (the node id where the kind runs in a Ray task).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from pipelines.registry import stage_kind
from pipelines.train.pretrain_task import PretrainTask


def _record(log: str, stage: str, event: str) -> None:
    if log:
        node = ""
        ray = sys.modules.get("ray")  # never imported here: in-process runs have no Ray
        if ray is not None and ray.is_initialized():
            node = f" {ray.get_runtime_context().get_node_id()}"
        with open(log, "a") as f:
            f.write(f"{stage} {event} {time.time():.3f} {os.getpid()}{node}\n")


def log_lines(log: str) -> list[dict]:
    """The lines `_record` wrote to `log`: stage, event, t (unix time), pid, node (None outside Ray)."""
    if not os.path.exists(log):
        return []
    out = []
    with open(log) as f:
        for line in f.read().splitlines():
            stage, event, t, pid, *node = line.split()
            out.append({"stage": stage, "event": event, "t": float(t), "pid": int(pid),
                        "node": node[0] if node else None})
    return out


def _wait_for_starts(log: str, stages: list[str], n: int, timeout_s: float) -> None:
    """Block until `log` holds `n` start lines of `stages` (this execution's included)."""
    if n <= 0:
        return
    if not log:
        raise ValueError("rendezvous needs a log")
    deadline = time.monotonic() + timeout_s
    while sum(1 for r in log_lines(log) if r["stage"] in stages and r["event"] == "start") < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rendezvous: fewer than {n} starts of {stages} within {timeout_s} s")
        time.sleep(0.05)


@dataclass
class EmitConfig:
    text: str = "hello"
    lines: int = 3
    log: str = ""
    sleep_s: float = 0.0
    # wait (after the start line) until the log holds this many starts of the stages `rendezvous_of`
    # (default: this stage): the executions that meet are then provably running at the same time (this
    # stage in concurrent runs, or several stages of one run); 0: no waiting
    rendezvous: int = 0
    rendezvous_of: list[str] = field(default_factory=list)
    rendezvous_timeout_s: float = 120.0


@stage_kind("test-emit", config=EmitConfig, version="1", description="Write `lines` copies of `text`.")
def emit(ctx):
    _record(ctx.config.log, ctx.stage, "start")
    _wait_for_starts(ctx.config.log, ctx.config.rendezvous_of or [ctx.stage], ctx.config.rendezvous,
                     ctx.config.rendezvous_timeout_s)
    time.sleep(ctx.config.sleep_s)
    with open(os.path.join(ctx.output_dir, "lines.txt"), "w") as f:
        f.write("".join(f"{ctx.config.text}\n" for _ in range(ctx.config.lines)))
    ctx.set_rows("lines.txt", ctx.config.lines)
    ctx.log_metrics({"progress": 1.0}, step=1)
    _record(ctx.config.log, ctx.stage, "end")
    return {"lines": ctx.config.lines, "forced": int(ctx.forced)}


@dataclass
class JoinConfig:
    log: str = ""
    upper: bool = False
    fail_if_exists: str = ""  # fail while this file exists (a fixable "bug")
    sleep_s: float = 0.0


@stage_kind("test-join", config=JoinConfig, version="1", description="Concatenate inputs' lines.")
def join(ctx):
    _record(ctx.config.log, ctx.stage, "start")
    time.sleep(ctx.config.sleep_s)
    if ctx.config.fail_if_exists and os.path.exists(ctx.config.fail_if_exists):
        raise RuntimeError(f"refusing to join while {ctx.config.fail_if_exists} exists")
    parts = []
    for name, manifest in ctx.inputs.items():
        with manifest.open("lines.txt") as f:
            parts.append(f.read().decode())
    text = "".join(parts)
    if ctx.config.upper:
        text = text.upper()
    os.makedirs(os.path.join(ctx.output_dir, "out"), exist_ok=True)
    with open(os.path.join(ctx.output_dir, "out", "lines.txt"), "w") as f:
        f.write(text)
    # Downstream joins read `lines.txt` at the top level too.
    with open(os.path.join(ctx.output_dir, "lines.txt"), "w") as f:
        f.write(text)
    ctx.extra["inputs"] = sorted(ctx.inputs)
    _record(ctx.config.log, ctx.stage, "end")
    return {"chars": len(text), "inputs": len(parts)}


@dataclass
class PartsConfig:
    parts: int = 4
    log: str = ""
    hold_after: int = 0  # after this many parts are written (0: never), wait while `hold_while_exists` exists
    hold_while_exists: str = ""
    hold_timeout_s: float = 300.0  # only so a broken test does not hang


@stage_kind("test-parts", config=PartsConfig, version="1",
            description="Write the inputs' lines into `parts` part files, one at a time.")
def parts(ctx):
    """`part-NNNNN.txt` for each part: a header line `part N` and the inputs' `lines.txt`, joined. After
    `hold_after` whole parts it logs `hold` and waits while `hold_while_exists` exists: a test that kills
    the run there knows some part files are written and the output is incomplete. The hold file is not
    the stage's output, so a rerun with it removed has the same key."""
    cfg = ctx.config
    _record(cfg.log, ctx.stage, "start")
    text = ""
    for manifest in ctx.inputs.values():
        with manifest.open("lines.txt") as f:
            text += f.read().decode()
    chars = 0
    for i in range(cfg.parts):
        if i == cfg.hold_after and cfg.hold_while_exists:
            _record(cfg.log, ctx.stage, "hold")
            deadline = time.monotonic() + cfg.hold_timeout_s
            while os.path.exists(cfg.hold_while_exists):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cfg.hold_while_exists} still there after {cfg.hold_timeout_s} s")
                time.sleep(0.05)
        body = f"part {i}\n{text}"
        rel = f"part-{i:05d}.txt"
        with open(os.path.join(ctx.output_dir, rel), "w") as f:
            f.write(body)
        ctx.set_rows(rel, body.count("\n"))
        chars += len(body)
    _record(cfg.log, ctx.stage, "end")
    return {"parts": cfg.parts, "chars": chars}


@dataclass
class NeedsConfig:
    size: int  # required: no default
    tags: list[str] = field(default_factory=list)
    mode: str = "a"


@stage_kind("test-required", config=NeedsConfig, version="1")
def required(ctx):
    return {"size": ctx.config.size}


class GatedPretrainTask(PretrainTask):
    """The pretraining task, stopped at a known point of the run so that a test can kill a worker there.

    Before the micro step ``gate_step`` (0-based; with ``grad_accum`` 1 that is after ``gate_step``
    completed steps) every rank writes ``<gate_dir>/waiting-rank<r>`` holding its pid and waits until
    ``<gate_dir>/go`` exists. Put the gate after a checkpoint: the run cannot end (or pass the checkpoint
    by a few steps) before the test has acted, whatever the machine's speed. After a restart ``go``
    already exists and the gate is open. ``timeout_s`` only keeps a broken test from hanging forever.
    Lives here so Ray workers can import it (tests/helpers is on their PYTHONPATH).
    """

    def __init__(self, cfg, shards, *, gate_dir: str, gate_step: int, timeout_s: float = 300.0):
        super().__init__(cfg, shards)
        self.gate_dir, self.gate_step, self.timeout_s = gate_dir, gate_step, timeout_s

    def prepare(self, batch, *, step, rank, device, dtype):
        go = os.path.join(self.gate_dir, "go")
        if step == self.gate_step and not os.path.exists(go):
            marker = os.path.join(self.gate_dir, f"waiting-rank{rank}")
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(marker + ".tmp", marker)  # whole or absent: the test reads the pid
            deadline = time.monotonic() + self.timeout_s
            while not os.path.exists(go):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gate {go} not opened within {self.timeout_s} s")
                time.sleep(0.05)
        return super().prepare(batch, step=step, rank=rank, device=device, dtype=dtype)
