"""The checksums of a run of values without headers made at once (``plain_checksums``,
``_storage/_row_sums.py``) against the code it replaced (``b"%b%d\\0%b" % (place, seq,
value)`` checksummed one value at a time) and the stored definition (``value_checksum``):
the same numbers for every queue id, first sequence number and run (across every boundary
of the digits the pieces are cut at), the same error for a value that is not bytes, and the
rows that the inserts of every broker's apply store checksummed by it."""

from __future__ import annotations

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import STORE_QUEUE
from trio_broker._storage import _integrity, _row_sums
from trio_broker._storage._integrity import insert_plain, insert_stamped, value_checksum
from trio_broker._storage._row_sums import plain_checksums

Q = STORE_QUEUE


def before(place: bytes, first: int, data: list) -> list[int]:
    """The checksum loop of ``insert_plain`` and ``insert_stamped`` before this module (a
    copy kept here: the new code must give exactly its numbers, or its error)."""
    return [
        google_crc32c.value(b"%b%d\0%b" % (place, seq, value))
        for seq, value in enumerate(data, first)
    ]


def place_of(queue_id: str) -> bytes:
    return queue_id.encode() + b"\0"


FIRSTS = st.one_of(
    st.integers(0, 2_000),
    st.sampled_from([999, 1_000, 9_999, 10_000, 999_999, 1_000_000, 2**31 - 1, 2**62]),
    st.integers(0, 2**63 - 1),
).flatmap(lambda n: st.integers(max(0, n - 3), n + 3))
QUEUE_IDS = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=20)
RUNS = st.lists(st.binary(max_size=40), max_size=40)


@settings(max_examples=300, deadline=None)
@given(QUEUE_IDS, FIRSTS, RUNS)
def test_the_checksums_are_the_ones_before_and_the_definitions(queue_id, first, data):
    got = plain_checksums(place_of(queue_id), first, data)
    assert got == before(place_of(queue_id), first, data)
    assert got == [value_checksum(queue_id, s, d, None) for s, d in enumerate(data, first)]


@pytest.mark.parametrize(
    "first", [0, 1, 5, 990, 999, 1_000, 1_001, 1_999, 9_990, 99_999, 999_500, 10**15 - 7]
)
@pytest.mark.parametrize("count", [1, 9, 10, 11, 1_000, 1_001, 2_017])
def test_runs_across_a_thousand_are_cut_right(first, count):
    """Runs that start and end on either side of one or more multiples of 1,000 (where the
    digits' pieces change), with a value of its own each."""
    data = [b"v%d" % n for n in range(count)]
    assert plain_checksums(b"Q-a\0", first, data) == before(b"Q-a\0", first, data)


def test_other_buffers_are_taken_as_before():
    """A bytearray or a memoryview value gives the number its bytes give (the ``%b`` took
    any buffer too); a tuple of values as a list."""
    data = [bytearray(b"ab"), memoryview(b"cd"), b"ef"]
    assert plain_checksums(b"Q\0", 998, data) == before(b"Q\0", 998, data)
    assert plain_checksums(b"Q\0", 998, tuple(data)) == before(b"Q\0", 998, data)


@pytest.mark.parametrize("bad", ["text", None, 7, ["b"]])
@pytest.mark.parametrize("first", [3, 1_998])
def test_a_value_that_is_not_bytes_is_refused_as_before(bad, first):
    data = [b"a", b"b", bad, b"c"]
    with pytest.raises(TypeError):
        before(b"Q\0", first, data)
    with pytest.raises(TypeError):
        plain_checksums(b"Q\0", first, data)


@pytest.mark.parametrize("first", [-1_005, -3, True, False])
def test_numbers_the_store_never_writes_take_the_definitions_way(first):
    """A negative first number (never stored) or a bool: the old loop's numbers."""
    data = [b"x%d" % n for n in range(12)]
    assert plain_checksums(b"Q\0", first, data) == before(b"Q\0", first, data)


def test_the_inserts_checksum_through_it(db, monkeypatch):
    """``insert_plain`` and ``insert_stamped`` (every broker's apply of batches and runs)
    take their checksums from ``plain_checksums``, one call per insert, and store them: the
    definition's numbers across a thousand."""
    calls = []

    def counted(place, first, data):
        calls.append((place, first, len(data)))
        return plain_checksums(place, first, data)

    monkeypatch.setattr(_integrity, "plain_checksums", counted)
    data = [b'"v%d"' % n for n in range(130)]
    insert_plain(db, Q, 950, data, 5)
    insert_stamped(db, Q, 1_080, data, list(range(130)))
    assert calls == [(place_of(Q), 950, 130), (place_of(Q), 1_080, 130)]
    stored = db.execute(
        "SELECT sequence_num, data, checksum FROM queue_data"
        " WHERE queue_number = (SELECT queue_number FROM queues WHERE queue_id = ?)"
        " ORDER BY sequence_num",
        (Q,),
    ).fetchall()
    assert [(s, d) for s, d, _ in stored] == list(enumerate(data + data, 950))
    assert [c for _, _, c in stored] == [value_checksum(Q, s, d, None) for s, d, _ in stored]


def test_the_tables_are_the_digits():
    assert _row_sums._BELOW[:3] == (b"0\0", b"1\0", b"2\0") and _row_sums._BELOW[999] == b"999\0"
    assert _row_sums._LAST_THREE[7] == b"007\0" and len(_row_sums._LAST_THREE) == 1000
