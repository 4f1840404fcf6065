"""A replica's decoded group of appends held as columns (``_core/_append_columns.py``): the
``APPEND_RUNS`` decoder's group holds an ``AppendColumns``, equal to the tuple of the
``AppendMessage``s it stands for; a replica's decode, walks, apply and views make none of
them, and give what the same group of ``AppendMessage``s gives (rows, results, weights)."""

from __future__ import annotations

import pickle
import random

import orjson
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core._append_columns import AppendColumns
from trio_broker._core._raft_messages import Entry
from trio_broker._protocol._entries import payload_bytes, payload_from_obj
from trio_broker._runtime._applied import applied_group, applies_later
from trio_broker._runtime._save_place import apply_weight
from trio_broker._runtime._snapshots import held_size
from trio_broker._storage import Store

STAMP = 1_765_000_000_000


def _runs(rng: random.Random) -> list[tuple[str, int, list[bytes]]]:
    """Random runs: 1 to 5 runs of 1 to 40 values, to one or two queues (one missing),
    stamps rising, equal or going back."""
    runs = []
    stamp = STAMP
    queue = rng.choice(["Q-1", "Q-2"])
    for _ in range(rng.randrange(1, 6)):
        if rng.random() < 0.3:
            queue = rng.choice(["Q-1", "Q-2", "Q-missing"])
        stamp += rng.choice([0, 1, 5, -40])
        values = [orjson.dumps(f"v{rng.randrange(10**6)}") for _ in range(rng.randrange(1, 41))]
        runs.append((queue, stamp, values))
    return runs


def _decoded(runs: list[tuple[str, int, list[bytes]]]) -> cmd.CommandGroup:
    obj = {
        "type": "APPEND_RUNS",
        "runs": [[q, s, [orjson.loads(v) for v in vs]] for q, s, vs in runs],
    }
    group = payload_from_obj(orjson.loads(orjson.dumps(obj)))
    assert type(group) is cmd.CommandGroup
    return group


def _plain(runs: list[tuple[str, int, list[bytes]]]) -> cmd.CommandGroup:
    return cmd.CommandGroup(
        tuple(cmd.AppendMessage(q, v, None, None, s) for q, s, vs in runs for v in vs)
    )


def test_a_decoded_group_holds_columns_equal_to_its_appends():
    rng = random.Random(5)
    for _ in range(30):
        runs = _runs(rng)
        decoded, plain = _decoded(runs), _plain(runs)
        columns = decoded.commands
        assert type(columns) is AppendColumns and columns._made is None
        assert len(columns) == len(plain.commands) and columns._made is None
        assert columns.data_bytes() == sum(len(c.data) for c in plain.commands)
        assert columns.head() == plain.commands[0] and columns._made is None
        assert decoded == plain and plain == decoded and hash(decoded) == hash(plain)
        assert repr(decoded) == repr(plain)
        assert columns == plain.commands and plain.commands == columns
        assert list(columns) == list(plain.commands) and columns[-1] == plain.commands[-1]
        assert columns[1:3] == plain.commands[1:3]
        assert pickle.loads(pickle.dumps(decoded)) == plain
        assert columns.head() is columns[0]  # (once made, the first made)


def test_columns_that_do_not_agree_are_refused():
    with pytest.raises(ValueError, match="do not agree"):
        AppendColumns(["Q-1"], [1], [2], (b'"a"',))
    with pytest.raises(ValueError, match="do not agree"):
        AppendColumns([], [], [], ())


def test_a_replicas_path_makes_no_append_and_does_what_the_appends_do(tmp_path):
    """Decoded and plain groups applied to two stores: the same rows and results, the same
    weights and sizes; the decoded group's appends never made when it is one queue's (fails
    before: no columns). A group of several queues, or of a missing one, makes them (rare:
    applied append by append, or refused, as before)."""
    rng = random.Random(8)
    stores = [Store(tmp_path / "decoded"), Store(tmp_path / "plain")]
    try:
        for store in stores:
            store.apply([cmd.CreateQueue("Q-1"), cmd.CreateQueue("Q-2")])
        for index in range(40):
            runs = _runs(rng)
            decoded, plain = _decoded(runs), _plain(runs)
            told: list[list[tuple[object, object]]] = [[], []]
            results = []
            for k, (store, group) in enumerate(zip(stores, (decoded, plain), strict=True)):
                entries = (Entry(1, index + 2, group),)
                assert applies_later(group) == applies_later(plain)
                assert apply_weight(entries) == len(plain.commands)
                assert held_size(group) == held_size(plain)
                assert cmd.data_size(group) == cmd.data_size(plain)
                (result,) = store.apply([group])
                applied_group(lambda c, r: told[k].append((c, r)))(group.commands, result.results)  # noqa: B023
                results.append(result)
            assert results[0] == results[1]
            assert told[0] == told[1]
            queues = {q for q, _, _ in runs}
            if queues != {"Q-missing"} and len(queues) == 1 and len(plain.commands) > 1:
                assert decoded.commands._made is None  # type: ignore[attr-defined]
        rows = [
            store._db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for store in stores
            for table in ("queues", "queue_data")
        ]
        assert rows[:2] == rows[2:]
    finally:
        for store in stores:
            store.close()


def test_a_decoded_group_is_written_again_as_it_came():
    """A replica elected leader sends its log's entries again: their bytes are the same."""
    rng = random.Random(2)
    for index in range(20):
        runs = _runs(rng)
        decoded, plain = _decoded(runs), _plain(runs)
        a, b = Entry(1, index + 1, decoded), Entry(1, index + 1, plain)
        assert payload_bytes(a, True) == payload_bytes(b, True)
        assert payload_bytes(Entry(1, 1, decoded), False) == payload_bytes(
            Entry(1, 1, plain), False
        )
