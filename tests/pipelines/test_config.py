"""Strict pipeline config: every error names file, stage and key, before any work."""

from __future__ import annotations

import pytest

from pipelines.config import load_pipeline
from pipelines.typed import ConfigError
from conftest import diamond


def load(project, body, *overrides):
    return load_pipeline(project.write(body), list(overrides), workdir=str(project.workdir))


def error_of(project, body, *overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load(project, body, *overrides)
    return str(info.value)


def test_valid_pipeline_resolves_defaults(project):
    spec = load(project, diamond(project))
    assert list(spec.stages) == ["a", "b", "c", "d"]
    assert spec.stages["b"].config.lines == 2
    assert spec.stages["a"].config.lines == 3  # default filled in
    resolved = spec.resolved()
    assert resolved["stages"]["d"]["with"]["upper"] is True
    assert resolved["storage"] == f"{project.workdir}/storage"
    assert spec.tracking_uri == f"sqlite:///{project.workdir}/mlflow.db"


def test_unknown_key_inside_with_names_file_stage_and_key(project):
    body = diamond(project)
    body["stages"]["c"]["with"]["uper"] = True
    msg = error_of(project, body)
    assert "p.yaml" in msg and "stage 'c'" in msg and "with.uper" in msg and "unknown key" in msg
    assert "upper" in msg  # lists the known keys


def test_unknown_stage_level_and_top_level_keys(project):
    body = diamond(project)
    body["stages"]["a"]["need"] = ["b"]
    assert "stage 'a': need: unknown key" in error_of(project, body)
    body = diamond(project)
    body["storge"] = "/tmp/x"
    assert "p.yaml: storge: unknown key" in error_of(project, body)
    body = diamond(project)
    body["ray"] = {"num_cpu": 2}
    assert "ray.num_cpu: unknown key" in error_of(project, body)


def test_wrong_types(project):
    body = diamond(project)
    body["stages"]["b"]["with"]["lines"] = "two"
    msg = error_of(project, body)
    assert "stage 'b'" in msg and "with.lines" in msg and "integer" in msg
    body = diamond(project)
    body["stages"]["d"]["with"]["upper"] = "yes"
    assert "with.upper: expected true/false" in error_of(project, body)
    body = diamond(project)
    body["stages"]["c"]["needs"] = "a"
    assert "stage 'c': needs: expected a list" in error_of(project, body)
    body = diamond(project)
    body["ray"] = {"num_cpus": 1.5}
    assert "ray.num_cpus: expected an integer" in error_of(project, body)


def test_missing_required_keys(project):
    body = {"plugins": ["omniway_test_kinds"],
            "stages": {"r": {"uses": "test-required", "with": {"tags": ["x"]}}}}
    msg = error_of(project, body)
    assert "stage 'r': with.size: required key is missing" in msg
    assert "uses: required key is missing" in error_of(project, {"stages": {"x": {"with": {}}}})
    assert "stages: required" in error_of(project, {"name": "empty"})


def test_nested_list_types_are_checked(project):
    body = {"plugins": ["omniway_test_kinds"],
            "stages": {"r": {"uses": "test-required", "with": {"size": 1, "tags": ["x", 3]}}}}
    assert "with.tags[1]: expected a string" in error_of(project, body)


def test_unknown_kind_unknown_needs_and_cycles(project):
    body = diamond(project)
    body["stages"]["a"]["uses"] = "test-emitt"
    msg = error_of(project, body)
    assert "stage 'a': uses: unknown stage kind 'test-emitt'" in msg and "test-emit" in msg
    body = diamond(project)
    body["stages"]["c"]["needs"] = ["a", "zz"]
    assert "stage 'c': needs: unknown stage 'zz'" in error_of(project, body)
    body = diamond(project)
    body["stages"]["a"]["uses"] = "test-join"
    body["stages"]["a"]["needs"] = ["d"]
    body["stages"]["a"]["with"] = {}
    msg = error_of(project, body)
    assert "stage 'c': needs: cycle a -> d -> c -> a" in msg


def test_unimportable_plugin(project):
    body = diamond(project)
    body["plugins"] = ["no_such_module_here"]
    assert "plugins: cannot import no_such_module_here" in error_of(project, body)


def test_overrides_are_typed_like_the_file(project):
    spec = load(project, diamond(project), "b.lines=7", "d.upper=false", "ray.num_cpus=1")
    assert spec.stages["b"].config.lines == 7
    assert spec.stages["d"].config.upper is False
    assert spec.ray.num_cpus == 1
    msg = error_of(project, diamond(project), "b.lines=seven")
    assert "stage 'b': with.lines: expected an integer, got 'seven'" in msg
    assert "no stage named 'zz'" in error_of(project, diamond(project), "zz.lines=1")
    assert "with.nope: unknown key" in error_of(project, diamond(project), "a.nope=1")
    assert "expected STAGE.KEY=VALUE" in error_of(project, diamond(project), "a.lines")


def test_config_error_from_cli_starts_no_work(project):
    body = diamond(project)
    body["stages"]["c"]["with"]["uper"] = True
    path = project.write(body)
    code, out, err = project.cli("run", str(path))
    assert code == 2
    assert "config error" in err and "with.uper" in err
    assert not project.workdir.exists()  # no storage, no MLflow database, no Ray
