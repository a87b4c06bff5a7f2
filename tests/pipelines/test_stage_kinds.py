"""A sweep over every registered stage kind: one module holds its config and its body, the default
config builds and survives to_dict / from_dict, every field is documented, and `omniway stages`
prints each field with the first line of its `Args:` entry."""

from __future__ import annotations

import contextlib
import io

import pytest

from pipelines import cli
from pipelines.registry import all_kinds, load_modules
from pipelines.typed import describe_fields, field_docs, from_dict, to_dict

load_modules()
# the built-in kinds (plugins, such as the test kinds other tests register, live elsewhere)
KINDS = sorted(n for n, k in all_kinds().items() if k.fn.__module__.startswith("pipelines.stages."))


def test_the_built_in_kinds_are_registered():
    assert {"corpus", "text-tokenizer", "visual-tokenizer", "shards", "pretrain"} <= set(KINDS)


@pytest.mark.parametrize("name", KINDS)
def test_kind_lives_in_one_module(name):
    kind = all_kinds()[name]
    module = kind.fn.__module__
    assert module == f"pipelines.stages.{name.replace('-', '_')}"
    assert kind.config.__module__ == module  # the config dataclass beside its body
    if kind.resolve is not None:
        assert kind.resolve.__module__ == module


@pytest.mark.parametrize("name", KINDS)
def test_default_config_round_trips(name):
    cls = all_kinds()[name].config
    config = cls()
    data = to_dict(config)
    again = from_dict(cls, data, "with")
    assert again == config and to_dict(again) == data


@pytest.mark.parametrize("name", KINDS)
def test_every_field_is_documented(name):
    cls = all_kinds()[name].config
    docs = field_docs(cls)
    rows = describe_fields(cls)
    assert rows, name
    undocumented = [field for field, _, _, doc in rows if not doc]
    assert not undocumented, f"{cls.__name__}: no Args: entry for {undocumented}"
    assert all(docs[field] == doc for field, _, _, doc in rows)


def test_stages_command_prints_each_field_with_its_doc():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["stages"]) == 0
    text = out.getvalue()
    for name in KINDS:
        kind = all_kinds()[name]
        assert f"\n{name}  (version {kind.version}" in "\n" + text
        for field, _, _, doc in describe_fields(kind.config):
            assert f"    {field}: " in text and f"  -- {doc}" in text, (name, field)
    # a first line, not the whole entry: the continuation of pretrain's `model` entry stays out
    assert "    model: dict[str, Any] = {}  -- ModelConfig overrides (nested dicts merge:" in text
    assert "The text vocabulary comes" not in text


def test_field_docs_reads_grouped_and_first_line_entries():
    class Example:
        """Args: a: first.
            b / c: shared
                continued.
        Raises:
            d: not a field.
        """

    assert field_docs(Example) == {"a": "first.", "b": "shared", "c": "shared"}
