"""What a person sees: the console of `omniway run`, and the MLflow UI of the run in a real browser.

One small pipeline (a corpus of generated images and texts with a broken image and a missing file, and a
visual tokenizer trained for a few steps through Ray Train + DeepSpeed) runs once, as a user runs it: the
`omniway` command in a subprocess with an embedded Ray of its own and driver logging on, without the
suite's quieting variables. The console tests read what it printed and what it left in Ray's logs folder;
the browser tests serve its MLflow store with `omniway ui` (a real `mlflow ui` on 127.0.0.1) and open it in
Debian's headless Chromium (the `browser` fixture of tests/pipelines/conftest.py). With OMNIWAY_SCREENSHOT_DIR set,
each page checked is saved there as a PNG. `--verbose` is checked last, by rerunning the training stage.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image, ImageDraw
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ("corpus", "visual-tokenizer")
STEPS = 4
MAX_LINE = 300

PIPELINE = f"""
name: console
ray: {{num_cpus: 2}}
stages:
  corpus:
    uses: corpus
    with:
      sources:
        - {{name: shapes, format: jsonl, path: index.jsonl}}
      val_fraction: 0.25
      rows_per_file: 8
      num_workers: 1
      plot_samples: 4
  visual-tokenizer:
    uses: visual-tokenizer
    needs: [corpus]
    with:
      tokenizer: {{image_resolution: 16, patch_size: 8, dim: 16, depth: 1, heads: 2, ffn_dim: 32, decoder_depth: 1,
                  codebook_size: 16, code_dim: 8}}
      train: {{steps: {STEPS}, micro_batch_size: 4, lr: 0.002, warmup_steps: 1, num_workers: 1, cpus_per_worker: 1,
              zero_stage: 0, log_every: 1, checkpoint_every: {STEPS}, precision: fp32}}
      val_images: 8
      plot_samples: 2
"""

# What the console must not show: Ray Train's reports and checkpoints, Ray Data's execution lines, Ray's
# and DeepSpeed's notices, and the warnings whose causes are fixed (those must not be in Ray's logs either).
FILTERED = ("Reporting training result", "Checkpoint successfully created", "Starting execution of Dataset",
            "Execution plan of Dataset", "execution finished in", "SplitCoordinator", "PreemptionWatcher",
            "core_worker.cc", "fontManager", "Token authentication", "Progress bars disabled",
            "Creating initial MLflow database tables", "Started a local Ray instance",
            "deepspeed_shm_comm_op", "TrainController")
FIXED = ("does not have any available CPUs", "falling back to serialize as pickled python objects",
         "The given NumPy array is not writable", "Setting accelerator to CPU")


def _png(colour: str, shape: str) -> bytes:
    image = Image.new("RGB", (24, 24), "white")
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)([4, 4, 19, 19], fill=colour)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def write_project(root: str) -> str:
    """The pipeline file and its corpus: 24 image + caption rows, 8 text-only rows (so that some corpus
    row groups hold no image), a truncated PNG and a missing file (two rejects)."""
    rows = []
    for i in range(24):
        colour, shape = ("red", "green", "blue")[i % 3], ("circle", "square")[i % 2]
        name = f"img{i:02d}.png"
        with open(os.path.join(root, name), "wb") as f:
            f.write(_png(colour, shape))
        rows.append({"image": name, "text": f"a {colour} {shape} number {i}"})
    rows += [{"text": f"a note without a picture, number {i}"} for i in range(8)]
    with open(os.path.join(root, "broken.png"), "wb") as f:
        f.write(_png("red", "circle")[:40])
    rows += [{"image": "broken.png", "text": "cut short"}, {"image": "absent.png", "text": "not there"}]
    with open(os.path.join(root, "index.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    path = os.path.join(root, "console.yaml")
    with open(path, "w") as f:
        f.write(PIPELINE)
    return path


def user_env() -> dict:
    """The environment of a user's shell: without the suite's quieting variables (tests/conftest.py), so
    that what the console shows is what `omniway run` itself makes of Ray's output."""
    env = dict(os.environ)
    for name in ("RAY_DATA_DISABLE_PROGRESS_BARS", "DS_ACCELERATOR", "RAY_AUTH_MODE", "RAY_ADDRESS",
                 "MLFLOW_TRACKING_URI", "OMNIWAY_WORKDIR"):
        env.pop(name, None)
    return env


def omniway(root: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=root, env=user_env(),
                          capture_output=True, text=True, timeout=timeout)


class Run:
    def __init__(self, root: str, pipeline: str, proc: subprocess.CompletedProcess):
        self.root, self.pipeline, self.proc = root, pipeline, proc
        self.out = proc.stdout + proc.stderr
        self.lines = self.out.splitlines()
        self.workdir = os.path.join(root, ".omniway")
        self.db = os.path.join(self.workdir, "mlflow.db")

    def ray_logs(self) -> str:
        m = re.search(r"^Ray's logs .*: (\S+)$", self.proc.stdout, re.M)
        assert m, self.out[-3000:]
        return m.group(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    root = str(tmp_path_factory.mktemp("console"))
    pipeline = write_project(root)
    proc = omniway(root, "run", pipeline)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return Run(root, pipeline, proc)


def test_console_lines_are_short_and_free_of_ray_noise(run):
    long = [line[:120] + "..." for line in run.lines if len(line) > MAX_LINE]
    assert not long, long
    shown = [(noise, line) for line in run.lines for noise in FILTERED + FIXED if noise in line]
    assert not shown, shown
    assert "nan" not in run.out.replace("nano", "")


def test_console_shows_the_plan_every_stage_start_and_end_and_the_summary(run):
    out = run.proc.stdout
    for stage in STAGES:
        assert re.search(rf"^{re.escape(stage)}\s+{re.escape(stage)}\s+stale\s", out, re.M), out  # the plan
        assert re.search(rf"^\[\d\d:\d\d:\d\d\] > {re.escape(stage)} \({re.escape(stage)}\) started, key [0-9a-f]+, "
                         r"MLflow run [0-9a-f]{32}$", out, re.M), out
        assert re.search(rf"^\[\d\d:\d\d:\d\d\] \+ {re.escape(stage)} done in \d+\.\ds  .+  \(MLflow run [0-9a-f]{{32}}\)$",
                         out, re.M), out
        assert re.search(rf"^{re.escape(stage)}\s+ran\s+\d+\.\ds\s", out, re.M), out  # the summary table
    # the corpus's own line, from its Ray task
    assert re.search(r"^\[\d\d:\d\d:\d\d\]   \[corpus\] read 34 = accepted 32 \+ rejected 2", out, re.M), out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "omniway ui " in out
    assert re.search(r"then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning$",
                     out, re.M), out


def test_training_prints_a_progress_line_every_log_every_steps_with_an_eta(run):
    progress = [line for line in run.lines if "[train] step " in line]
    pattern = re.compile(r"^\[\d\d:\d\d:\d\d\]   \[train\] step (\d+)/%d  loss \d+\.\d{4}  lr \S+  tokens/s \d+  "
                         r"data wait \d+%%  eta (\d+m)?\d+s$" % STEPS)
    assert [int(pattern.match(line).group(1)) for line in progress] == list(range(1, STEPS + 1)), progress


def test_what_the_console_leaves_out_is_in_rays_logs_and_the_fixed_warnings_nowhere(run):
    logs = run.ray_logs()
    text = ""
    for path in glob.glob(os.path.join(logs, "**", "*"), recursive=True):
        if os.path.isfile(path) and path.endswith((".out", ".err", ".log")):
            with open(path, errors="replace") as f:
                text += f.read()
    for noise in ("Reporting training result", "Execution plan of Dataset", "Started a local Ray instance"):
        assert noise in text, noise  # kept where Ray keeps its output (the driver's in omniway-driver.log)
    for warning in FIXED:
        assert warning not in text, warning
    # the run had what made Ray Data pickle the pixels: corpus row groups without a single image
    import pyarrow.parquet as pq

    groups = []
    for split in ("train", "val"):
        for path in glob.glob(os.path.join(run.workdir, "storage", "console", "corpus", "*", split, "*.parquet")):
            f = pq.ParquetFile(path)
            groups += [f.read_row_group(g, columns=["image"]).column("image").null_count == f.metadata.row_group(g).num_rows
                       for g in range(f.num_row_groups)]
    assert any(groups) and not all(groups), groups


def test_the_experiment_is_marked_as_model_training(run):
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(f"sqlite:///{run.db}").get_experiment_by_name("console")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


# ---- the MLflow UI, in a browser ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(run):
    """`omniway ui` on the run's store: (what it printed, the URL it names). Stopped at the end."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", run.pipeline, "--port", str(port)],
                            cwd=run.root, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    printed = []
    try:
        while not any("newest run:" in line for line in printed):
            line = proc.stdout.readline()
            assert line, "".join(printed)
            printed.append(line)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "".join(printed)
                time.sleep(1)
        text = "".join(printed)
        url = re.search(r"open (http://\S+/runs\S*)$", text, re.M).group(1)
        yield text, url, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()


def _screenshot(browser, name: str) -> None:
    where = os.environ.get("OMNIWAY_SCREENSHOT_DIR")
    if where:
        os.makedirs(where, exist_ok=True)
        browser.save_screenshot(os.path.join(where, f"{name}.png"))


def _wait_text(browser, *texts: str, timeout: float = 60):
    """Wait until the page shows every one of ``texts``; returns the page's text."""
    WebDriverWait(browser, timeout).until(
        lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts))
    return browser.find_element(By.TAG_NAME, "body").text


def test_omniway_ui_prints_its_command_and_the_run_to_open(run, ui):
    text, url, port = ui
    assert f"--backend-store-uri sqlite:///{run.db} --host 127.0.0.1 --port {port} --workers 1" in text
    parent = re.search(r"MLflow run ([0-9a-f]{32})", run.proc.stdout).group(1)
    assert f"newest run: console-" in text and parent in text
    assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/#/experiments/\d+/runs\?workflowType=machine_learning", url)


def _stage_runs(run) -> dict[str, str]:
    return dict(re.findall(r"^\[\d\d:\d\d:\d\d\] > (\S+) \(\S+\) started, key \w+, MLflow run ([0-9a-f]{32})$",
                           run.proc.stdout, re.M))


def test_the_experiment_opens_on_its_runs_and_the_parent_run_holds_its_stages(run, ui, browser):  # noqa: F811
    _, url, _ = ui
    browser.get(url)
    body = _wait_text(browser, "Run Name", "console-")
    assert "No data available" not in body  # not the GenAI overview
    assert "corpus" not in body  # the stages are children: folded under the parent run
    _screenshot(browser, "mlflow_runs")
    link = browser.find_element(By.XPATH, "//a[contains(., 'console-')]")
    link.find_element(By.XPATH, "./ancestor::div[@role='gridcell'][1]").find_elements(By.CSS_SELECTOR, "button")[0].click()
    _wait_text(browser, "corpus", "visual-tokenizer")
    _screenshot(browser, "mlflow_runs_expanded")


def test_the_training_stage_has_a_loss_chart(run, ui, browser):  # noqa: F811
    _, url, _ = ui
    run_id = _stage_runs(run)["visual-tokenizer"]
    browser.get(url.replace("/runs?", f"/runs/{run_id}/model-metrics?"))
    _wait_text(browser, "visual-tokenizer", "Model metrics")
    # the chart titled `loss` (not only `rec_loss`, `val/rec_loss`): charts render as they scroll into view,
    # so the page's search keeps the loss charts only
    browser.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']").send_keys("loss")
    WebDriverWait(browser, 60).until(
        lambda d: "loss" in d.find_element(By.TAG_NAME, "body").text.splitlines()
        and d.find_elements(By.CSS_SELECTOR, "svg.main-svg .trace, svg.main-svg .scatterlayer path"))
    _screenshot(browser, "mlflow_training_metrics")


def test_the_stage_artifacts_are_listed(run, ui, browser):  # noqa: F811
    _, url, _ = ui
    runs = _stage_runs(run)
    browser.get(url.replace("/runs?", f"/runs/{runs['visual-tokenizer']}/artifacts?"))
    _wait_text(browser, "loss_curve.png", "visual_tokenizer.png")
    _screenshot(browser, "mlflow_training_artifacts")
    browser.get(url.replace("/runs?", f"/runs/{runs['corpus']}/artifacts?"))
    _wait_text(browser, "corpus_samples.png", "rejects", "_manifest.json")
    _screenshot(browser, "mlflow_corpus_artifacts")


def test_verbose_brings_rays_output_back(run):
    proc = omniway(run.root, "run", run.pipeline, "--verbose", "--force", "--only", "visual-tokenizer")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "Reporting training result" in out and "Execution plan of Dataset" in out
    assert re.search(r"\[train\] step %d/%d  loss" % (STEPS, STEPS), out), out[-3000:]


def test_eta_is_defined_from_the_first_progress_line():
    from pipelines.train.tracking import RunLogger, progress_line

    logger = RunLogger(None, None, total_steps=100)
    logger.begin(0)
    start = logger.start[1]
    assert logger.eta_s(10, now=start + 20) == 180  # first line: the pace since the loop began (2 s / step)
    logger.first_line = (10, start + 20)
    assert logger.eta_s(30, now=start + 40) == 70  # then the pace since the first line (1 s / step)
    line = progress_line(30, 100, {"loss": 2.5, "lr": 3e-4, "tokens_per_s": 1234.4, "data_wait_share": 0.031}, 70)
    assert line == "[train] step 30/100  loss 2.5000  lr 3.0e-04  tokens/s 1234  data wait 3%  eta 1m10s"


def test_stages_kind_shows_one_kind_in_full(capsys):
    from pipelines import cli

    assert cli.main(["stages", "visual-tokenizer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("visual-tokenizer  (version")
    assert "\n    train: TrainConfig\n" in out and "\n        log_every: int = 10\n" in out  # nested, expanded
    assert "corpus  (version" not in out
    assert cli.main(["stages", "no-such-kind"]) == 2
    assert "registered: " in capsys.readouterr().err
