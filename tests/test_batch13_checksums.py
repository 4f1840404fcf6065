"""The stored checksums of a run of ``bytes`` continued from each prefix's checksum
(``_row_sums._extended_sums``, what ``plain_checksums`` takes for such runs) against the
stored definition: the same numbers for every queue id, first number and run across the
thousands, no bytes joined from 1,000 on, and the joins still taken, with the same numbers or
the same error, for values ``extend`` refuses."""

from __future__ import annotations

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_broker._storage import _row_sums
from trio_broker._storage._integrity import value_checksum
from trio_broker._storage._row_sums import _extended_sums, plain_checksums


def definition(place: bytes, first: int, data: list) -> list[int]:
    return [
        google_crc32c.value(b"%b%d\0%b" % (place, seq, bytes(value)))
        for seq, value in enumerate(data, first)
    ]


FIRSTS = st.one_of(
    st.integers(0, 3_000),
    st.sampled_from([999, 9_999, 99_999, 999_999, 2**31 - 1, 2**32, 2**44 - 2_000]),
    st.integers(0, 2**63 - 1),
).flatmap(lambda n: st.integers(max(0, n - 3), n + 3))


@settings(max_examples=200, deadline=None)
@given(
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=20),
    FIRSTS,
    st.lists(st.binary(max_size=300), min_size=_row_sums.SHORT_RUN, max_size=60),
)
def test_each_checksum_is_the_definitions(queue_id, first, data):
    place = queue_id.encode() + b"\0"
    expected = [value_checksum(queue_id, s, d, None) for s, d in enumerate(data, first)]
    assert _extended_sums(place, first, data) == expected
    assert plain_checksums(place, first, data) == expected


@pytest.mark.parametrize("first", [0, 12, 987, 988, 999, 1_000, 1_001, 1_987, 9_995, 10**12 - 5])
@pytest.mark.parametrize("count", [12, 13, 999, 1_000, 1_001, 2_013])
def test_runs_across_thousands(first, count):
    data = [b"value %d" % n for n in range(count)]
    assert _extended_sums(b"Q-a\0", first, data) == definition(b"Q-a\0", first, data)


def test_no_bytes_are_joined_from_a_thousand_on(monkeypatch):
    """Each value's checksum is continued from its prefix's, not taken over joined bytes:
    no join at all for numbers of 1,000 or more, one per value below."""
    joined = []
    real = _row_sums._join

    def counting(parts):
        joined.append(1)
        return real(parts)

    monkeypatch.setattr(_row_sums, "_join", counting)
    data = [b"v%d" % n for n in range(1_500)]
    assert plain_checksums(b"Q\0", 1_000_001, data) == definition(b"Q\0", 1_000_001, data)
    assert joined == []
    assert plain_checksums(b"Q\0", 990, data) == definition(b"Q\0", 990, data)
    assert len(joined) == 10


def test_other_buffers_take_the_joins():
    """``extend`` takes only ``bytes``: a run holding a bytearray or a memoryview is
    checksummed by the joins, with its bytes' numbers."""
    data = [b"x%d" % n for n in range(30)]
    data[17] = bytearray(b"ab")
    data[25] = memoryview(b"cd")
    assert plain_checksums(b"Q\0", 1_990, data) == definition(b"Q\0", 1_990, data)


@pytest.mark.parametrize("bad", ["text", None, 7])
def test_a_value_that_is_not_bytes_is_refused(bad):
    data = [b"x%d" % n for n in range(30)]
    data[20] = bad
    with pytest.raises(TypeError):
        plain_checksums(b"Q\0", 1_990, data)
