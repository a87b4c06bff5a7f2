"""Wall time of a fully cached rerun of a 6-stage pipeline against `omniway --help`.

Both are timed as fresh `omniway` processes in the same run, so interpreter
start-up counts for both. A cached rerun must only read manifests: no Ray, no
MLflow. Last line: `cached_rerun_over_help: <ratio>` (target <= 2).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPEATS = int(os.environ.get("BENCH_REPEATS", "15"))

KINDS = textwrap.dedent('''
    import os
    from dataclasses import dataclass
    from pipelines.registry import stage_kind

    @dataclass
    class StepConfig:
        size: int = 1000

    @stage_kind("bench-step", config=StepConfig, version="1")
    def step(ctx):
        data = b"".join(m.open(f["path"]).read() for m in ctx.inputs.values() for f in m.files)
        with open(os.path.join(ctx.output_dir, "data.bin"), "wb") as f:
            f.write(data[: ctx.config.size] or os.urandom(ctx.config.size))
        return {"bytes": ctx.config.size}
''')

PIPELINE = textwrap.dedent('''
    name: bench
    ray: {num_cpus: 2}
    plugins: [bench_kinds]
    stages:
      s1: {uses: bench-step}
      s2: {uses: bench-step, needs: [s1]}
      s3: {uses: bench-step, needs: [s1]}
      s4: {uses: bench-step, needs: [s2, s3]}
      s5: {uses: bench-step, needs: [s4]}
      s6: {uses: bench-step, needs: [s5], with: {size: 10}}
''')


def omniway() -> list[str]:
    exe = Path(sys.executable).with_name("omniway")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pipelines.cli"]


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="omniway-bench-dag-"))
    try:
        (root / "bench_kinds.py").write_text(KINDS)
        (root / "pipeline.yaml").write_text(PIPELINE)
        env_cmd = omniway()
        first = timed([*env_cmd, "run", "pipeline.yaml"], root)
        print(f"first run (6 stages on Ray, MLflow): {first:.2f}s")
        rerun, helps = [], []
        for _ in range(REPEATS):  # interleaved, so background load hits both alike
            rerun.append(timed([*env_cmd, "run", "pipeline.yaml"], root))
            helps.append(timed([*env_cmd, "--help"], root))
        r, h = statistics.median(rerun), statistics.median(helps)
        print(f"cached rerun: median {r * 1000:.0f} ms over {REPEATS} runs")
        print(f"omniway --help: median {h * 1000:.0f} ms over {REPEATS} runs")
        print(f"cached_rerun_over_help: {r / h:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
