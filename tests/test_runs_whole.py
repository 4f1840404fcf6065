"""An ``APPEND_RUNS`` payload decoded as one group (``_runs_decode._runs_from_obj``: every run
checked, all the values written as one list, the appends made in one set of passes)
gives what decoding it run by run gives (``_runs_by_run``, the code before): the same commands,
each of its own, for groups of many runs, queues, stamps and values of every JSON kind, and the
same error, in the same order, for any group that fails."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_broker._core import _commands as cmd
from trio_broker._core._proposals import MAX_GROUP
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol import _entries, _runs_decode
from trio_broker._protocol._entries import payload_from_obj

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=4,
)
QUEUES = st.sampled_from(["Q-AAAAABBBBB", 'Q-"é,}', "Q-ü€\\", "Q-x"])
RUNS = st.lists(
    st.tuples(QUEUES, st.integers(0, 2**63 - 1), st.lists(JSON_VALUES, min_size=1, max_size=6)),
    min_size=1,
    max_size=12,
)


def _payload(runs: list[Any]) -> dict[str, Any]:
    """The payload as a replica parses it from a frame or a log row."""
    return orjson.loads(orjson.dumps({"type": "APPEND_RUNS", "runs": [list(r) for r in runs]}))


@settings(max_examples=40, deadline=None)
@given(RUNS)
def test_a_group_decodes_as_it_did_run_by_run(runs):
    whole = _runs_decode._runs_from_obj(_payload(runs))
    by_run = _runs_decode._runs_by_run(_payload(runs)["runs"])
    assert whole == by_run
    assert type(whole) is cmd.CommandGroup  # (made without its check: the same object)
    assert hash(whole) == hash(cmd.CommandGroup(whole.commands))
    assert repr(whole) == repr(by_run)
    assert [type(c) for c in whole.commands] == [cmd.AppendMessage] * len(whole.commands)
    assert len({id(c) for c in whole.commands}) == len(whole.commands)
    expected = [
        cmd.AppendMessage(queue, orjson.dumps(value), None, None, stamp)
        for queue, stamp, values in runs
        for value in values
    ]
    assert list(whole.commands) == expected


def _error(obj: dict[str, Any]) -> str:
    with pytest.raises(RemoteProtocolError) as caught:
        payload_from_obj(obj)
    return str(caught.value)


def _error_by_run(obj: dict[str, Any]) -> str:
    try:
        _runs_decode._runs_by_run(obj["runs"])
    except Exception as exc:
        why = f"malformed APPEND_RUNS log entry: {_entries.describe_error(exc)}"
        return str(RemoteProtocolError(why))
    raise AssertionError("no error")


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


BAD_RUNS = [
    ["Q-a", 1],
    ("Q-a", 1, ["v"]),
    [7, 1, ["v"]],
    ["Q-a", "1", ["v"]],
    ["Q-a", True, ["v"]],
    ["Q-a", 1.5, ["v"]],
    ["Q-a", 1, []],
    ["Q-a", 1, "v"],
    ["Q-a", 1, [_deep(300)]],
    ["Q-a", 1, ["a", _deep(300)]],
    ["Q-a", 1, ["x"] * (MAX_GROUP + 1)],
]


@pytest.mark.parametrize("bad", range(len(BAD_RUNS)))
@pytest.mark.parametrize("where", ["alone", "first", "middle", "last"])
@pytest.mark.parametrize("second", [None, *range(len(BAD_RUNS))])
def test_a_failing_group_raises_what_it_raised_run_by_run(bad, where, second):
    """A bad run anywhere, alone or before a second bad run of another kind: the first in the
    order run by run wins (a run's values are written before the next run is checked)."""
    good = ["Q-a", 5, ["ok", 1]]
    runs: list[Any] = {
        "alone": [BAD_RUNS[bad]],
        "first": [BAD_RUNS[bad], good],
        "middle": [good, BAD_RUNS[bad], good],
        "last": [good, good, BAD_RUNS[bad]],
    }[where]
    if second is not None:
        runs = [*runs, BAD_RUNS[second]]
    obj = {"type": "APPEND_RUNS", "runs": runs}
    assert _error(obj) == _error_by_run(obj)


def test_runs_up_to_the_bound_are_taken_and_one_more_is_refused():
    at_bound = [["Q-a", 1, ["x"] * (MAX_GROUP - 1)], ["Q-b", 2, ["y"]]]
    group = _runs_decode._runs_from_obj({"type": "APPEND_RUNS", "runs": at_bound})
    assert len(group.commands) == MAX_GROUP
    assert group.commands[-1] == cmd.AppendMessage("Q-b", b'"y"', None, None, 2)
    over = [*at_bound, ["Q-c", 3, ["z"]]]
    obj = {"type": "APPEND_RUNS", "runs": over}
    assert _error(obj) == _error_by_run(obj)
    assert "at most" in _error(obj)


def test_a_group_is_made_in_one_pass_not_run_by_run(monkeypatch):
    """Many runs of values without commas: the group's values written as one list, no
    ``dumps_values`` and no ``_appends_of_run`` per run (fails before: one each per run); a
    value with a comma in one run: each run's values by ``dumps_values``, as before."""
    calls = []
    real = _runs_decode.dumps_values
    monkeypatch.setattr(_runs_decode, "dumps_values", lambda v: calls.append(len(v)) or real(v))

    def no_run_by_run(*args: Any) -> Any:
        raise AssertionError("made run by run")

    monkeypatch.setattr(_runs_decode, "_appends_of_run", no_run_by_run)
    runs = [["Q-a", n, [f"v{n}", n]] for n in range(40)]
    group = _runs_decode._runs_from_obj({"type": "APPEND_RUNS", "runs": runs})
    assert len(group.commands) == 80
    assert calls == []
    runs[3][2][1] = "a,b"
    group = _runs_decode._runs_from_obj({"type": "APPEND_RUNS", "runs": runs})
    assert calls == [2] * 40
    assert group.commands[7] == cmd.AppendMessage("Q-a", b'"a,b"', None, None, 3)
    assert group.commands[6] == cmd.AppendMessage("Q-a", b'"v3"', None, None, 3)
