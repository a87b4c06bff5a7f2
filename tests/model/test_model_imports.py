"""model/ must import with ray, deepspeed and mlflow unavailable (the dependency direction is one-way)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = ("ray", "deepspeed", "mlflow")

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"model/ must not import {name}")
            return None

    sys.meta_path.insert(0, Block())
    import model
    names = [m.name for m in pkgutil.walk_packages(model.__path__, "model.")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("imported", len(names), "modules:", " ".join(sorted(names)))
    """
)


def test_model_imports_without_ray_deepspeed_mlflow():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for sub in ("model.config", "model.network", "model.interop.beit3", "model.checkpoint", "model.heads"):
        assert sub in proc.stdout


def test_model_block_really_blocks():
    # the guard itself must work, or the test above proves nothing
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("import model\n", "import model\nimport mlflow\n", 1)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0 and "must not import mlflow" in proc.stderr
