"""The constructors of the two objects built per APPEND (docs/performance-history.md, "The peer
links' socket calls, and two constructors"): ``AppendMessage``'s hand-written ``__init__`` takes and
sets what attrs' own would, and both classes stay frozen."""

from __future__ import annotations

import attrs
import pytest

from trio_broker._core._commands import AppendMessage
from trio_broker._protocol._messages import Append

# What attrs would generate for AppendMessage's fields: the reference for its __init__.
Reference = attrs.make_class(
    "Reference",
    {f.name: attrs.field(default=f.default) for f in attrs.fields(AppendMessage)},
    frozen=True,
)

CALLS = [
    (("Q-1", b"1"), {}),
    (("Q-1", b'"x"', "P-1", 7, 1_700_000_000_000), {}),
    (("Q-1", b"[]"), {"appended_ms": 5}),
    (("Q-1",), {"data": b"2", "producer_seq": 3, "producer_id": "P-2"}),
    ((), {"queue_id": "Q-2", "data": b"{}", "producer_id": None, "appended_ms": None}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_append_message_takes_and_sets_what_attrs_init_would(args, kwargs):
    made = AppendMessage(*args, **kwargs)
    assert attrs.astuple(made) == attrs.astuple(Reference(*args, **kwargs))
    assert made == attrs.evolve(made) and hash(made) == hash(attrs.evolve(made))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("Q-1",), {}),  # no data
        (("Q-1", b"1", None, None, 5, "extra"), {}),
        (("Q-1", b"1"), {"producer": "P-1"}),
        (("Q-1", b"1"), {"queue_id": "Q-2"}),
    ],
)
def test_append_message_refuses_the_calls_attrs_init_refuses(args, kwargs):
    with pytest.raises(TypeError):
        Reference(*args, **kwargs)
    with pytest.raises(TypeError):
        AppendMessage(*args, **kwargs)


def test_both_stay_frozen():
    message = AppendMessage("Q-1", b"1", appended_ms=5)
    request = Append("Q-1", {"a": 1}, "C-1")
    for obj, field in ((message, "data"), (request, "data"), (request, "client_id")):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(obj, field, None)
    assert request == Append("Q-1", {"a": 1}, "C-1") != Append("Q-1", {"a": 2}, "C-1")
    assert attrs.evolve(request, client_id=None) == Append("Q-1", {"a": 1})
