"""A leader's receives held as columns, from the ledger to the store, against the same
receives queued as one ``AppendMessage`` each (``Proposals.add_columns`` against
``add_many``): every entry's bytes (with and without ``APPEND_RUNS``: a member that does not
read the runs gets the COMMAND_GROUP form), what applying the entry in memory stores and
answers (the leader's apply), what applying it decoded from those bytes stores and answers
(a replica, and every broker's replay after a crash between the save and the apply), and
each token settled exactly once with the same outcome (docs/performance-history.md, "The leader's
receive held as columns (thirteenth round)")."""

from __future__ import annotations

from collections import Counter
from typing import Any

import apsw
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.test_colrun import BASE_MS, MISSING, QUEUES, _state, queues_db
from trio_broker._core._append_columns import AppendColumns
from trio_broker._core._commands import AppendMessage, GroupApplied, ReadNext
from trio_broker._core._proposals import Proposals
from trio_broker._core._raft import NotLeader
from trio_broker._protocol._entries import decode_payload, encode_payload
from trio_broker._storage._queue_sql import apply_command


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: Any) -> Any:
    connection = queues_db(tmp_path_factory.mktemp("revcols13"))
    yield connection
    connection.close()


_text = st.text(
    alphabet=st.sampled_from(["a", "é", "🙂", '"', "\\", "\n", "\x01", "\u2028", "/", "<"]),
    max_size=12,
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_queue = st.sampled_from((*QUEUES, MISSING))
_stamp = st.integers(BASE_MS - 40, BASE_MS + 40)  # (behind a queue's last stamp, or after it)
_receive = st.tuples(st.just("columns"), _queue, _stamp, st.lists(_json, min_size=1, max_size=12))
_other = st.tuples(
    st.sampled_from(("producer", "read", "lone")), _queue, _stamp, st.lists(_json, max_size=1)
)
_case = st.tuples(
    st.one_of(  # (receives alone, as under a pipelined load, or mixed with other commands)
        st.lists(_receive, min_size=1, max_size=10),
        st.lists(st.one_of(_receive, _receive, _other), min_size=1, max_size=10),
    ),
    st.sampled_from((1, 2, 3, 7, 1024, 1024)),
    st.sampled_from((None, None, 90, 200, 600, 5_000)),
    st.sets(st.integers(1, 12), max_size=3),  # (the groups the core refuses: not the leader)
)


def _fill(ledger: Proposals[int], items: list[Any], as_columns: bool) -> list[int]:
    """Queue ``items`` (receives as columns or as their appends made one by one, the others
    as commands), token ``n`` for the ``n``-th request; the tokens, in order."""
    tokens: list[int] = []
    for kind, queue, stamp, values in items:
        datas = tuple(orjson.dumps(v) for v in values)
        if kind == "columns":
            run = AppendColumns([queue], [stamp], [len(datas)], datas)
            new = list(range(len(tokens), len(tokens) + len(datas)))
            if as_columns:
                ledger.add_columns(run, new)
            else:
                ledger.add_many([AppendMessage(queue, d, None, None, stamp) for d in datas], new)
            tokens += new
            continue
        if kind == "producer":  # (an idempotent producer: its retry repeats the sequence)
            command: Any = AppendMessage(queue, datas[0] if datas else b"0", "P-1", 1, stamp)
        elif kind == "read":
            command = ReadNext("C-1", queue)
        else:
            command = AppendMessage(queue, datas[0] if datas else b"1", None, None, stamp)
        ledger.add(command, len(tokens))
        tokens.append(len(tokens))
    return tokens


class _Core:
    """A leader's core: appends each payload at the next index of term 3, or refuses it."""

    def __init__(self, refused: set[int]) -> None:
        self.calls = 0
        self.refused = refused
        self.log: list[Any] = []

    def propose(self, payload: Any) -> tuple[int, int]:
        self.calls += 1
        if self.calls in self.refused:
            raise NotLeader(None)
        self.log.append(payload)
        return 3, len(self.log)


def _apply(db: apsw.Connection, payloads: list[Any]) -> tuple[Any, list[Any]]:
    """The state after applying ``payloads`` in order, and each entry's result (as a plain
    list of results for a group); rolled back after."""
    db.execute("BEGIN")
    try:
        results: list[Any] = []
        for payload in payloads:
            result = apply_command(db, payload)
            results.append(list(result.results) if type(result) is GroupApplied else result)
        return _state(db), results
    finally:
        db.execute("ROLLBACK")


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # (receives of three queues and two stamps joined in one entry, one cut by the bound)
    case=(
        [
            ("columns", QUEUES[0], BASE_MS, ["a", "é"]),
            ("columns", QUEUES[0], BASE_MS, ["b"]),
            ("columns", QUEUES[1], BASE_MS - 30, ['"\\', {"k": [1]}]),
            ("columns", MISSING, BASE_MS, [1, 2]),
            ("columns", QUEUES[0], BASE_MS + 1, ["c", "d", "e"]),
        ],
        9,
        None,
        set(),
    )
)
@given(case=_case)
def test_columns_store_answer_and_settle_as_appends_made_one_by_one(
    shared_db: apsw.Connection, case: Any
) -> None:
    """Would catch a run's values written under another queue or stamp (``%`` swapped, two
    receives of one queue joined across another's), a receive cut where its appends are not
    (a value moved to another entry), a COMMAND_GROUP form that differs for a member without
    ``APPEND_RUNS``, a decoded entry that applies otherwise than the leader's in-memory one
    (a replica, or a replay after a crash, storing other rows), a refused group's tokens
    dropped or settled twice, or a token given another append's result."""
    items, max_group, max_bytes, refused = case
    seen: list[Any] = []
    for as_columns in (True, False):
        ledger: Proposals[int] = Proposals(max_group=max_group, max_bytes=max_bytes)
        tokens = _fill(ledger, items, as_columns)
        core = _Core(refused)
        settled = [(t, type(o).__name__) for t, o in ledger.propose_queued(core.propose)]
        assert ledger.queued == 0
        written = [
            (encode_payload(p, True), encode_payload(p, False)) for p in core.log
        ]  # (before any comparison: it would make a group's appends)
        in_memory = _apply(shared_db, core.log)
        for runs in (0, 1):  # (a replica's apply, and a restart's replay, of the bytes saved)
            assert _apply(shared_db, [decode_payload(w[runs]) for w in written]) == in_memory
        for index, result in enumerate(in_memory[1], start=1):
            outcome = GroupApplied(tuple(result)) if type(result) is list else result
            for token, got in ledger.applied(index, 3, outcome):
                settled.append((token, repr(got)))
        assert len(ledger) == 0
        once = Counter(t for t, _ in settled)
        assert sorted(once) == tokens and set(once.values()) == {1}  # (each exactly once)
        seen.append((written, in_memory, sorted(settled), ledger.grouped))
    assert seen[0] == seen[1]
