"""Object references without a cluster: capture, pickling, identity, reference counts.

A tiny fake client records ``_incref`` / ``_decref`` calls; refs are dropped with
``del`` (CPython frees them at once; ``gc.collect()`` is not needed but is cheap).
"""

from __future__ import annotations

import copy
import gc
import pickle
from collections import Counter

import pytest

from graphexec import _context
from graphexec.client.refs import LazyRef, ObjectRef, capture_refs
from graphexec.graph.task import Task, TaskRef, find_refs


class FakeClient:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []

    def _incref(self, key: str) -> None:
        self.counts[key] += 1
        self.log.append(("+", key))

    def _decref(self, key: str) -> None:
        self.counts[key] -= 1
        self.log.append(("-", key))


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def no_current_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_context, "_client", None)


# ------------------------------------------------------------------------------ identity


def test_equality_and_hash_are_by_key() -> None:
    a1, a2, b = ObjectRef("a"), ObjectRef("a"), ObjectRef("b")
    assert a1 == a2
    assert hash(a1) == hash(a2) == hash(TaskRef("a"))
    assert a1 != b
    assert len({a1, a2, b}) == 2
    assert {a1: 1}[a2] == 1
    assert a1 == LazyRef("a") == TaskRef("a")  # all refs to one key are the same ref
    assert a1 != "a"
    assert a1.hex() == "a"
    assert repr(a1) == "ObjectRef(a)"
    assert ObjectRef[int]("a") == a1  # the generic alias builds a plain ObjectRef


def test_refs_are_task_refs_for_graph_code() -> None:
    ref = ObjectRef("a")
    assert isinstance(ref, TaskRef)
    node = Task("t", len, (ref, [LazyRef("b")]))
    assert node.dependencies == frozenset({"a", "b"})
    assert find_refs({"x": (ref,)}) == {"a"}


# ------------------------------------------------------------------------------ pickling


def test_pickled_object_ref_is_an_object_ref_with_the_same_key(no_current_client: None) -> None:
    ref = ObjectRef("a", node=object())
    back = pickle.loads(pickle.dumps(ref))
    assert type(back) is ObjectRef
    assert back.key == "a"
    assert back == ref
    assert back._node is None  # the producing node stays with the submitter
    assert type(copy.copy(ref)) is ObjectRef


def test_unpickled_ref_counts_on_the_current_client(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = pickle.dumps(ObjectRef("a"))
    monkeypatch.setattr(_context, "_client", client)
    back = pickle.loads(data)
    assert back._client is client
    assert client.counts["a"] == 1
    del back
    gc.collect()
    assert client.counts["a"] == 0


def test_pickled_lazy_ref_is_a_plain_task_ref(client: FakeClient) -> None:
    lazy = LazyRef("a", None, client)
    back = pickle.loads(pickle.dumps(lazy))
    assert type(back) is TaskRef
    assert back.key == "a"
    assert client.counts["a"] == 1  # only the original counts


def test_refs_inside_containers_pickle(no_current_client: None) -> None:
    obj = {"refs": [ObjectRef("a"), (ObjectRef("b"),)]}
    back = pickle.loads(pickle.dumps(obj))
    assert back == {"refs": [ObjectRef("a"), (ObjectRef("b"),)]}
    assert all(type(r) is ObjectRef for r in [back["refs"][0], back["refs"][1][0]])


# ------------------------------------------------------------------------------ capture


def test_capture_turns_object_refs_into_lazy_refs_holding_the_node(client: FakeClient) -> None:
    node = object()
    ref = ObjectRef("a", node, client)
    captured = capture_refs(ref)
    assert type(captured) is LazyRef
    assert captured.key == "a"
    assert captured._node is node
    assert captured._client is client


def test_capture_walks_lists_tuples_and_dict_values(client: FakeClient) -> None:
    a, b, c = (ObjectRef(k, None, client) for k in "abc")
    args = (1, [a, "s", {"k": b, "n": None}], (c,), {"deep": [[(a,)]]})
    out = capture_refs(args)
    assert out == args  # equal by key, same structure
    flat = [out[1][0], out[1][2]["k"], out[2][0], out[3]["deep"][0][0][0]]
    assert [type(r) for r in flat] == [LazyRef] * 4
    assert out[1][1] == "s" and out[0] == 1


def test_capture_returns_ref_free_objects_unchanged() -> None:
    plain = [1, (2, "x"), {"k": [b"v", None, 1.5]}]
    assert capture_refs(plain) is plain
    assert capture_refs(plain[1]) is plain[1]
    assert capture_refs(plain[2]) is plain[2]
    assert capture_refs("text") == "text"
    custom = object()
    assert capture_refs(custom) is custom


def test_capture_keeps_sibling_containers_without_refs(client: FakeClient) -> None:
    untouched = [1, 2, 3]
    out = capture_refs([untouched, ObjectRef("a", None, client)])
    assert out[0] is untouched


# ------------------------------------------------------------------------------ counting


def test_object_ref_counts_while_alive(client: FakeClient) -> None:
    ref = ObjectRef("a", None, client)
    assert client.counts["a"] == 1
    other = ObjectRef("a", None, client)
    assert client.counts["a"] == 2
    del ref
    gc.collect()
    assert client.counts["a"] == 1
    del other
    gc.collect()
    assert client.counts["a"] == 0
    assert client.log == [("+", "a"), ("+", "a"), ("-", "a"), ("-", "a")]


def test_ref_without_client_counts_nothing(client: FakeClient) -> None:
    ref = ObjectRef("a")
    del ref
    gc.collect()
    assert client.log == []


def test_lazy_ref_consume_releases_once(client: FakeClient) -> None:
    lazy = LazyRef("a", object(), client)
    assert client.counts["a"] == 1
    lazy.consume()
    assert client.counts["a"] == 0
    assert lazy._node is None  # the submitted node is not kept alive by the ref
    lazy.consume()
    assert client.counts["a"] == 0
    del lazy
    gc.collect()
    assert client.counts["a"] == 0  # no second release when collected
    assert client.log == [("+", "a"), ("-", "a")]


def test_unconsumed_lazy_ref_releases_when_collected(client: FakeClient) -> None:
    lazy = LazyRef("a", None, client)
    del lazy
    gc.collect()
    assert client.log == [("+", "a"), ("-", "a")]


def test_captured_refs_keep_the_key_alive_after_the_object_ref_goes(client: FakeClient) -> None:
    ref = ObjectRef("a", None, client)
    args = capture_refs((ref,))
    assert client.counts["a"] == 2
    del ref
    gc.collect()
    assert client.counts["a"] == 1  # the not-yet-submitted task still holds it
    args[0].consume()
    assert client.counts["a"] == 0
    del args
    gc.collect()
    assert client.counts["a"] == 0


def test_decref_errors_are_swallowed_at_collection() -> None:
    class Closing(FakeClient):
        def _decref(self, key: str) -> None:
            raise RuntimeError("client already closed")

    ref = ObjectRef("a", None, Closing())
    del ref  # must not raise (nor warn: warnings are errors here)
    gc.collect()
