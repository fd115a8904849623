"""Per-key changes: replaying two requests' changes never loses either one's writes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fastapi_atomic.websession.record import apply_ops

keys = st.sampled_from(["a", "b", "c"])
values = st.integers(min_value=-5, max_value=5)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, values),
        st.tuples(st.just("delete"), keys, st.none()),
        st.tuples(st.just("append"), st.just("list"), values),
        st.tuples(st.just("increment"), st.just("count"), values),
    ),
    max_size=8,
)


def test_the_operations() -> None:
    data = apply_ops({"a": 1, "list": [1]}, [("set", "b", 2), ("delete", "a", None)])
    assert data == {"b": 2, "list": [1]}
    assert apply_ops({}, [("append", "l", 1), ("append", "l", 2)]) == {"l": [1, 2]}
    assert apply_ops({"n": 2}, [("increment", "n", 3)]) == {"n": 5}


@given(ops, ops)
def test_appends_and_increments_of_two_requests_compose(first: Any, second: Any) -> None:
    both = apply_ops(apply_ops({}, first), second)
    appended = [v for kind, _, v in first + second if kind == "append"]
    assert both.get("list", []) == appended
    increments = sum(v for kind, _, v in first + second if kind == "increment")
    assert both.get("count", 0) == increments


@given(ops, ops)
def test_keys_only_one_request_touched_keep_its_value(first: Any, second: Any) -> None:
    touched_by_second = {key for kind, key, _ in second if kind in {"set", "delete"}}
    alone = apply_ops({}, first)
    both = apply_ops(alone, second)
    for key in {"a", "b", "c"} - touched_by_second:
        assert both.get(key) == alone.get(key)


def test_the_input_is_never_mutated() -> None:
    data = {"list": [1]}
    apply_ops(data, [("append", "list", 2), ("set", "x", {"deep": [1]})])
    assert data == {"list": [1]}
