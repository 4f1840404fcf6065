"""A run's results made without ``MessageAppended``'s own ``__init__`` (``_appended`` in
``_storage/_append_sql.py``, its slots set one by one: docs/performance.md, "A replica's CPU
per append (this round)") are the objects that ``__init__`` makes: the same class, fields,
equality, hash and representation, as frozen, and a run applied in SQL answers with them."""

from __future__ import annotations

import attrs
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._storage import Store
from trio_broker._storage._append_sql import _appended


@pytest.mark.parametrize("sequence_num", [0, 1, 7, 2**40, 2**63 - 1])
def test_a_result_made_by_its_slots_is_the_one_its_init_makes(sequence_num):
    made, want = _appended(sequence_num), cmd.MessageAppended(sequence_num)
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
