"""Fixtures for runner tests: a pipeline file in a temporary project, and the CLI."""

from __future__ import annotations

import contextlib
import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

import os

import pytest
import yaml

from pipelines import cli


@dataclass
class Project:
    root: Path

    @property
    def log(self) -> Path:
        return self.root / "executions.log"

    @property
    def workdir(self) -> Path:
        return self.root / ".omniway"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.workdir}/mlflow.db"

    def write(self, body: dict | str, name: str = "p.yaml") -> Path:
        path = self.root / name
        if isinstance(body, dict):
            body = yaml.safe_dump(body, sort_keys=False)
        path.write_text(textwrap.dedent(body))
        return path

    def runs(self) -> list[str]:
        """Stage names that executed, in start order (from the kinds' log)."""
        if not self.log.exists():
            return []
        return [line.split()[0] for line in self.log.read_text().splitlines()
                if line.split()[1] == "start"]

    def clear_log(self) -> None:
        self.log.unlink(missing_ok=True)

    def cli(self, *args: str) -> tuple[int, str, str]:
        """Run `omniway ARGS` in-process with this project's workdir."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            argv = list(args)
            if argv and argv[0] in ("run", "status"):
                argv += ["--workdir", str(self.workdir)]
            code = cli.main(argv)
        return code, out.getvalue(), err.getvalue()

    def manifest_dirs(self, pipeline: str, stage: str) -> list[Path]:
        base = self.storage / pipeline / stage
        return sorted(p for p in base.iterdir() if not p.name.startswith("_")) if base.exists() else []


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return Project(tmp_path)


def diamond(project: Project, **overrides) -> dict:
    """a, b -> c -> d : two independent sources, a join, a join of the join."""
    log = str(project.log)
    stages = {
        "a": {"uses": "test-emit", "with": {"text": "alpha", "log": log}},
        "b": {"uses": "test-emit", "with": {"text": "beta", "lines": 2, "log": log}},
        "c": {"uses": "test-join", "needs": ["a", "b"], "with": {"log": log}},
        "d": {"uses": "test-join", "needs": ["c"], "with": {"log": log, "upper": True}},
    }
    for stage, cfg in overrides.items():
        stages[stage]["with"].update(cfg)
    return {"name": "diamond", "plugins": ["omniway_test_kinds"], "stages": stages}


# Debian's headless browser and its driver (`make test` installs chromium and chromium-driver)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium; missing browser binaries fail the test (they are a test dependency)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: `make test` installs Debian's chromium and "
                    "chromium-driver (or run `apt-get install chromium chromium-driver`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs the tests as root, where Chromium's sandbox refuses to start
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
