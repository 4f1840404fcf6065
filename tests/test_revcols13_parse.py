"""A receive's parse into columns (``Runs._plain_commands``) against what it gave before the
columns (one ``AppendMessage`` per APPEND, written out below as it was): for any receive of
the original contract's APPENDs and other requests, to queue ids and names, of values of any
text, size and depth, the same commands or the same None (docs/performance-history.md, "The leader's
receive held as columns (thirteenth round)")."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.test_columns13_runs import _Driver, _runs
from trio_broker._core._append_columns import AppendColumns
from trio_broker._core._commands import AppendMessage
from trio_broker._protocol._codec import DEEP_FROM, decode_client_request

STAMP = 1_765_000_000_123


def _before(runs: Any, requests: list[Any]) -> list[Any] | None:
    """``_plain_commands`` as it was before the columns."""
    limit = min(runs._driver.max_group, runs._config.max_in_flight)
    if len(requests) > limit or runs._closing():
        return None
    longest = min(runs._max_data, DEEP_FROM)
    for request in requests:
        if (
            type(request) is not tuple
            or len(request[1]) > longest
            or not request[0].startswith("Q-")
        ):
            return None
    return [AppendMessage(q, d, None, None, STAMP) for q, d, _ in requests]


_text = st.text(alphabet=st.sampled_from(["a", "é", "🙂", '"', "\\", "\n", "\x01"]), max_size=6)
_value = st.one_of(
    _text,
    st.integers(-(2**63), 2**63 - 1),
    st.text(alphabet="x", min_size=250, max_size=320),  # (about max_data below)
    st.integers(2, 300).map(lambda n: orjson.loads("[" * min(n, 250) + "]" * min(n, 250))),
    st.lists(st.dictionaries(_text, _text, max_size=2), max_size=3),
)
_append = st.tuples(st.sampled_from(("Q-A", "Q-B", "name", "Q-é")), _value).map(
    lambda qv: {"operation": "APPEND", "queue_name": qv[0], "data": qv[1]}
)
_request = st.one_of(
    _append,
    _append,
    _append,
    st.just({"operation": "READ", "queue_name": "Q-A", "client_id": "c"}),
    st.just({"operation": "APPEND", "queue_name": "Q-A", "data": 1, "producer_id": "P"}),
)


_short = st.one_of(  # (298 x's are written in 300 bytes: max_data below)
    _text, st.integers(-(2**63), 2**63 - 1), st.integers(297, 300).map(lambda n: "x" * n)
)
_clean = st.lists(  # (the usual receive: short values to one queue id, at times two)
    st.tuples(st.sampled_from(("Q-A", "Q-A", "Q-A", "Q-B")), _short).map(
        lambda qv: {"operation": "APPEND", "queue_name": qv[0], "data": qv[1]}
    ),
    min_size=2,
    max_size=12,
)


@settings(max_examples=100, deadline=None, derandomize=True)
@example(
    requests=[
        {"operation": "APPEND", "queue_name": "Q-A", "data": "a"},
        {"operation": "APPEND", "queue_name": "Q-A", "data": "b"},
        {"operation": "APPEND", "queue_name": "Q-B", "data": "c"},
    ],
    max_group=1024,
)  # (two queues)
@example(
    requests=[
        {"operation": "APPEND", "queue_name": "Q-A", "data": "x" * 298},
        {"operation": "APPEND", "queue_name": "Q-A", "data": "x" * 299},
    ],
    max_group=1024,
)  # (one byte past max_data)
@example(
    requests=[
        {"operation": "APPEND", "queue_name": "Q-A", "data": "a"},
        {"operation": "APPEND", "queue_name": "name", "data": "b"},
    ],
    max_group=1024,
)  # (a queue's name after an id)
@given(
    requests=st.one_of(
        _clean,
        st.tuples(_append, st.lists(_request, min_size=1, max_size=11)).map(
            lambda fr: [fr[0], *fr[1]]
        ),
    ),
    max_group=st.sampled_from((2, 5, 12, 1024)),
)
def test_a_receive_parses_to_the_commands_it_parsed_to_before(
    requests: list[dict[str, Any]], max_group: int
) -> None:
    """Would catch a receive to two queues held as one queue's run, a receive with a queue's
    name, a long value or another request held as columns, or a value's bytes or the stamp
    taken otherwise."""
    decoded = [decode_client_request(orjson.dumps(r)) for r in requests]
    if type(decoded[0]) is not tuple:  # (handle_many asks only of a receive led by one)
        return
    driver = _Driver()
    driver.max_group = max_group
    runs = _runs(driver, max_data=300)
    got = runs._plain_commands(decoded)
    expected = _before(runs, decoded)
    if type(got) is AppendColumns:
        assert got._made is None and len({q for q, _, _ in decoded}) == 1
        assert got.queues == [decoded[0][0]] and got.stamps == [STAMP]
        got = list(got)
    assert got == expected
