"""A run's results made without ``MessageAppended``'s own ``__init__`` (``_appended_run`` in
``_storage/_append_sql.py``, their slots set through their descriptors in passes over the
run: docs/performance-history.md, "A replica's CPU per append (third round)" and "A replica's
per-append path (seventh round)") are the objects that ``__init__`` makes: the same class,
fields, equality, hash and representation, as frozen, each its own object and in order, and
a run applied in SQL answers with them."""

from __future__ import annotations

import attrs
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._storage import Store
from trio_broker._storage._append_sql import _appended_run


@pytest.mark.parametrize("sequence_num", [0, 1, 7, 2**40, 2**63 - 1])
def test_a_result_made_by_its_slots_is_the_one_its_init_makes(sequence_num):
    (made,) = _appended_run(sequence_num, 1)
    want = cmd.MessageAppended(sequence_num)
    assert type(made) is cmd.MessageAppended
    assert (
        attrs.asdict(made)
        == attrs.asdict(want)
        == {
            "sequence_num": sequence_num,
            "duplicate": False,
        }
    )
    assert made == want and hash(made) == hash(want) and repr(made) == repr(want)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        made.sequence_num = 1  # type: ignore[misc]


@pytest.mark.parametrize("first, count", [(1, 1), (1, 2), (7, 64), (2**40, 300), (5, 0)])
def test_a_run_of_results_is_each_result_in_order(first, count):
    made = _appended_run(first, count)
    want = [cmd.MessageAppended(n) for n in range(first, first + count)]
    assert type(made) is list and made == want
    assert [type(r) for r in made] == [cmd.MessageAppended] * count
    numbers = range(first, first + count)
    assert [(r.sequence_num, r.duplicate) for r in made] == [(n, False) for n in numbers]
    assert len({id(r) for r in made}) == count  # (each its own object)


def test_a_run_of_appends_answers_with_those_results(tmp_path):
    store = Store(tmp_path)
    try:
        store.apply([cmd.CreateQueue("Q-1")])
        run = [
            cmd.AppendMessage("Q-1", b'"v"', None, None, 1_765_000_000_000 + i // 3)
            for i in range(10)
        ]
        (applied,) = store.apply([cmd.CommandGroup(tuple(run))])
    finally:
        store.close()
    assert applied.results == tuple(cmd.MessageAppended(n) for n in range(1, 11))
    assert {type(r) for r in applied.results} == {cmd.MessageAppended}
