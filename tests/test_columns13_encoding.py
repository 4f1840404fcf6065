"""A leader's group of receives held as columns encoded for its log and its REPLICATEs
(``_protocol/_entries._columns_runs_bytes``): byte for byte what the same appends, made one
by one, are encoded as, in every form and for every value, queue and stamp
(docs/performance-history.md, "The leader's receive held as columns (thirteenth round)")."""

from __future__ import annotations

import random

import orjson
import pytest

from tests.test_pipelead_ledger import random_text
from trio_broker._core._append_columns import AppendColumns, columns_group
from trio_broker._core._commands import CommandGroup
from trio_broker._core._raft_messages import Entry
from trio_broker._protocol import _entries
from trio_broker._protocol._entries import decode_payload, encode_payload, payload_bytes


def _value(rng: random.Random) -> bytes:
    kind = rng.randrange(40)
    if kind == 0:  # (deep enough that a run would nest it past what orjson writes)
        depth = rng.choice((240, 251, 253))
        return b"[" * depth + b"]" * depth
    if kind == 1:  # (long, with brackets, shallow)
        return orjson.dumps([{"a": [1]}] * rng.randrange(60, 200))
    if kind == 2:
        return orjson.dumps(random_text(rng, "", 30))
    return orjson.dumps("x" * rng.choice((0, 1, 100, 600)))


def _columns(rng: random.Random) -> AppendColumns:
    queues = ("Q-A", random_text(rng, "Q-", 20))
    runs = rng.randrange(1, 6)
    names = [rng.choice(queues) for _ in range(runs)]
    stamps = [rng.choice((0, 5, 6, 2**63, -(2**63))) for _ in range(runs)]
    counts = [rng.randrange(1, 5) for _ in range(runs)]
    datas = tuple(_value(rng) for _ in range(sum(counts)))
    return AppendColumns(names, stamps, counts, datas)


@pytest.mark.parametrize("seed", range(200))
def test_columns_are_encoded_as_their_appends(seed: int) -> None:
    """The same bytes with and without ``APPEND_RUNS`` (two runs of an equal queue and stamp
    written as one, a value that may nest too deep keeping the COMMAND_GROUP form, a stamp
    orjson writes or refuses as for the appends), decoded back to the same appends. Would
    catch runs written unmerged, a deep value written in a run, or a queue id escaped
    otherwise than orjson escapes it."""
    rng = random.Random(seed)
    columns = _columns(rng)
    appends = CommandGroup(tuple(columns.made()))
    for runs in (True, False):
        held = AppendColumns(columns.queues, columns.stamps, columns.counts, columns.datas)
        try:
            expected: bytes | type = encode_payload(appends, runs)
        except (TypeError, orjson.JSONEncodeError) as exc:
            expected = type(exc)
        try:
            got: bytes | type = encode_payload(columns_group(held), runs)
        except (TypeError, orjson.JSONEncodeError) as exc:
            got = type(exc)
        if runs:  # (the appends made only where the runs' form is not written)
            assert (held._made is None) == (_entries._columns_runs_bytes(held) is not None)
        assert got == expected
        if type(got) is bytes:
            assert decode_payload(got) == appends


def test_a_run_of_columns_is_written_without_making_its_appends() -> None:
    columns = AppendColumns(["Q-A", "Q-A", "Q-B"], [5, 5, 6], [2, 1, 1], (b"1", b'"2"', b"3", b"4"))
    entry = Entry(1, 7, columns_group(columns))
    written = payload_bytes(entry, True)
    assert written == b'{"type":"APPEND_RUNS","runs":[["Q-A",5,[1,"2",3]],["Q-B",6,[4]]]}'
    assert columns._made is None
    assert entry.checksum == _entries.entry_checksum(1, 7, written)
