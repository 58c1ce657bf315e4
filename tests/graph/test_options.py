"""Task options: declared once, validated in one place, immutable."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from graphexec.graph.options import DEFAULT_OPTIONS, OPTION_NAMES, TaskOptions


def test_defaults_follow_ray():
    o = TaskOptions()
    assert o == DEFAULT_OPTIONS
    assert (o.num_cpus, o.num_gpus, o.num_returns, o.max_retries) == (1.0, 0.0, 1, 3)
    assert o.retry_exceptions is False and o.pure is False and o.name is None
    assert set(OPTION_NAMES) == {f.name for f in dataclasses.fields(TaskOptions)}


def test_merge_returns_new_validated_instance():
    o = DEFAULT_OPTIONS.merge(num_cpus=2, num_gpus=0.5, memory=1e9, name="job")
    assert (o.num_cpus, o.num_gpus, o.memory, o.name) == (2.0, 0.5, 1e9, "job")
    assert isinstance(o.num_cpus, float)
    assert DEFAULT_OPTIONS.num_cpus == 1.0  # unchanged


def test_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_OPTIONS.num_cpus = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"num_cpus": -1}, ValueError, ">= 0"),
        ({"num_cpus": "2"}, TypeError, "must be a number"),
        ({"num_gpus": True}, TypeError, "must be a number"),
        ({"num_returns": 0}, ValueError, ">= 1"),
        ({"num_returns": 1.5}, TypeError, "must be an int"),
        ({"max_retries": -2}, ValueError, ">= -1"),
        ({"pure": 1}, TypeError, "True or False"),
        ({"name": 3}, TypeError, "must be a string"),
        ({"resources": [("a", 1)]}, TypeError, "dict"),
        ({"resources": {1: 1}}, TypeError, "strings"),
        ({"resources": {"GPU": 1}}, ValueError, "num_gpus="),
        ({"resources": {"disk": -1}}, ValueError, ">= 0"),
        ({"retry_exceptions": [int]}, TypeError, "exception classes"),
        ({"retry_exceptions": "yes"}, TypeError, "exception classes"),
    ],
)
def test_merge_rejects_bad_values(changes, error, match):
    with pytest.raises(error, match=match):
        DEFAULT_OPTIONS.merge(**changes)


def test_unknown_option_suggests_close_name():
    with pytest.raises(ValueError, match="did you mean 'max_retries'"):
        DEFAULT_OPTIONS.merge(max_retry=1)
    with pytest.raises(ValueError, match="unknown option 'zzz'; valid options"):
        DEFAULT_OPTIONS.merge(zzz=1)


def test_resources_are_sorted_tuples_and_none_is_empty():
    o = DEFAULT_OPTIONS.merge(resources={"b": 1, "a": 2})
    assert o.resources == (("a", 2.0), ("b", 1.0))
    assert DEFAULT_OPTIONS.merge(resources=None).resources == ()
    assert o == DEFAULT_OPTIONS.merge(resources={"a": 2, "b": 1})


def test_retry_exceptions_forms():
    assert DEFAULT_OPTIONS.merge(retry_exceptions=True).retry_exceptions is True
    o = DEFAULT_OPTIONS.merge(retry_exceptions=[ValueError, KeyError])
    assert o.retry_exceptions == (ValueError, KeyError)
    assert DEFAULT_OPTIONS.merge(max_retries=-1).max_retries == -1


def test_demand():
    assert DEFAULT_OPTIONS.demand() == {"CPU": 1.0}
    o = DEFAULT_OPTIONS.merge(num_cpus=0, num_gpus=1, memory=100, resources={"disk": 2})
    assert o.demand() == {"CPU": 0.0, "GPU": 1.0, "memory": 100.0, "disk": 2.0}


def test_hashable_and_pickles():
    o = DEFAULT_OPTIONS.merge(num_cpus=2, resources={"x": 1}, retry_exceptions=[ValueError])
    assert hash(o) == hash(
        DEFAULT_OPTIONS.merge(num_cpus=2, resources={"x": 1}, retry_exceptions=[ValueError])
    )
    assert pickle.loads(pickle.dumps(o)) == o
