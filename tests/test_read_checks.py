"""The read paths' checks of a run of stored values made as the writes make them
(``_row_sums.plain_checksums``): ``_intact_run`` (``read_values``' check) and
``_read_columns.intact_columns`` accept exactly the rows the code before accepted (a copy of it
kept here), intact or damaged in every way a row can be (a value's byte, its type, its checksum,
a row moved, missing or out of order, headers), for any queue id and first sequence number, and
a long run without headers takes the run builder (fails before: no such call)."""

from __future__ import annotations

import tempfile
from itertools import repeat
from typing import Any

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_broker._core import _commands as cmd
from trio_broker._storage import Store, _integrity, _read_columns, _row_sums
from trio_broker._storage._integrity import COLUMN_CHECKS, _intact_run, value_checksum
from trio_broker._storage._read_columns import intact_columns

_PLAIN = b"%b%d\0%b"
_HEADED = b"%b%d\0%b\0%b"


def intact_run_before(queue_id: str, start: int, rows: list[Any]) -> list[Any] | None:
    """``_intact_run`` before the ninth round (a copy: the new one must give its answers)."""
    place = queue_id.encode() + b"\0"
    out = []
    seq = start
    for row_seq, data, headers, checksum in rows:
        if row_seq != seq or type(data) is not bytes:
            return None
        if headers is None:
            if checksum != google_crc32c.value(_PLAIN % (place, seq, data)):
                return None
        elif type(headers) is not str or checksum != google_crc32c.value(
            _HEADED % (place, seq, data, headers.encode())
        ):
            return None
        out.append((seq, data, headers))
        seq += 1
    return out


def columns_before(queue_id: str, start: int, rows: list[Any]) -> tuple[Any, ...] | None:
    """``intact_columns``' check of rows ``(data, headers, checksum)`` before the ninth round."""
    count = len(rows)
    datas, headers, checksums = zip(*rows, strict=True)
    seqs = range(start, start + count)
    place = queue_id.encode() + b"\0"
    try:
        if headers.count(None) == count:
            found = tuple(
                map(
                    google_crc32c.value,
                    map(_PLAIN.__mod__, zip(repeat(place), seqs, datas, strict=False)),
                )
            )
        else:
            found = tuple(
                google_crc32c.value(_PLAIN % (place, seq, data))
                if text is None
                else google_crc32c.value(_HEADED % (place, seq, data, text.encode()))
                for seq, data, text in zip(seqs, datas, headers, strict=True)
            )
    except (TypeError, AttributeError):
        return None
    if found != checksums:
        return None
    return seqs, datas, headers, checksums


FIRSTS = st.one_of(
    st.integers(0, 2_000),
    st.sampled_from([999, 1_000, 9_999, 10_000, 999_999, 2**31 - 1, 2**62]),
).flatmap(lambda n: st.integers(max(0, n - 40), n + 3))
QUEUE_IDS = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=12)
DAMAGES = st.sampled_from(
    ["none", "byte", "checksum", "str", "int", "none_value", "float", "moved", "swapped", "header"]
)


def stored_rows(queue_id: str, first: int, values: list[bytes], headed: set[int]) -> list[Any]:
    rows = []
    for i, value in enumerate(values):
        seq = first + i
        headers = '{"k":"v"}' if i in headed else None
        rows.append([seq, value, headers, value_checksum(queue_id, seq, value, headers)])
    return rows


def damaged(rows: list[Any], damage: str, at: int) -> list[Any]:
    rows = [list(r) for r in rows]
    if not rows or damage == "none":
        return rows
    at %= len(rows)
    row = rows[at]
    if damage == "byte":
        row[1] = bytes([row[1][0] ^ 1]) + row[1][1:] if row[1] else b"\0"
    elif damage == "checksum":
        row[3] ^= 1 << (at % 32)
    elif damage == "str":
        row[1] = row[1].decode("latin-1")
    elif damage == "int":
        row[1] = 7
    elif damage == "none_value":
        row[1] = None
    elif damage == "float":
        row[3] = float(row[3])  # (equal as a number: accepted before, and now)
    elif damage == "moved":
        row[0] += 1
    elif damage == "swapped" and len(rows) > 1:
        other = (at + 1) % len(rows)
        rows[at], rows[other] = rows[other], rows[at]
    elif damage == "header":
        row[2] = "{}"
    return rows


@settings(max_examples=250, deadline=None)
@given(
    QUEUE_IDS,
    FIRSTS,
    st.lists(st.binary(max_size=12), min_size=1, max_size=80),
    st.sets(st.integers(0, 79), max_size=2),
    DAMAGES,
    st.integers(0, 79),
)
def test_a_run_is_accepted_as_before(queue_id, first, values, headed, damage, at):
    rows = damaged(stored_rows(queue_id, first, values, headed), damage, at)
    as_read = [tuple(r) for r in rows]
    assert _intact_run(queue_id, first, as_read) == intact_run_before(queue_id, first, as_read)
    columns = [tuple(r[1:]) for r in rows]
    ordered = all(r[0] == first + i for i, r in enumerate(rows))
    if ordered:  # (intact_columns never reads the sequence numbers: they come in order)
        new = _read_columns_check(queue_id, first, columns)
        assert new == columns_before(queue_id, first, columns)


def _read_columns_check(queue_id: str, start: int, rows: list[Any]) -> tuple[Any, ...] | None:
    """``intact_columns`` of ``rows`` as if SQLite had read them."""

    class _Rows:
        def fetchall(self) -> list[Any]:
            return rows

    class _Db:
        filename = "x"

        def execute(self, *_: Any) -> _Rows:
            return _Rows()

    return intact_columns(_Db(), queue_id, start, start + len(rows) - 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("first", [0, 968, 969, 999, 1_000, 9_990, 999_990, 10**15 - 5])
@pytest.mark.parametrize("count", [COLUMN_CHECKS - 1, COLUMN_CHECKS, 100, 1_001])
def test_long_runs_across_the_digits_are_read_as_written(first, count):
    """Runs on either side of the columns' bound and of a thousand: intact, they read back
    whole; any one value changed, the whole run is refused (read row by row after)."""
    queue_id = "Q-ü€"
    rows = stored_rows(queue_id, first, [b"v%d" % n for n in range(count)], set())
    as_read = [tuple(r) for r in rows]
    assert _intact_run(queue_id, first, as_read) == [(r[0], r[1], None) for r in rows]
    for at in (0, count // 2, count - 1):
        for damage in ("byte", "checksum", "str", "none_value", "moved"):
            bad = [tuple(r) for r in damaged(rows, damage, at)]
            assert _intact_run(queue_id, first, bad) is None


def test_a_long_run_is_checked_by_the_run_builder(monkeypatch):
    """Runs of ``COLUMN_CHECKS`` rows or more without headers take ``plain_checksums``, once,
    in both read paths, and read back what was written (fails before: no such call)."""
    calls = []
    real = _row_sums.plain_checksums

    def spy(place, first, data):
        calls.append(len(data))
        return real(place, first, data)

    monkeypatch.setattr(_integrity, "plain_checksums", spy)
    monkeypatch.setattr(_read_columns, "plain_checksums", spy)
    queue_id = "Q-reads"
    values = tuple(b'"%d"' % n for n in range(300))
    with tempfile.TemporaryDirectory() as path:
        store = Store(path)
        try:
            store.apply([cmd.CreateQueue(queue_id)])
            store.apply([cmd.AppendBatch(queue_id, values)])
            calls.clear()
            db = store._db
            read = _integrity.read_values(db, queue_id, 1, 300)
            assert read == [(n + 1, v, None) for n, v in enumerate(values)]
            columns = intact_columns(db, queue_id, 5, 104)
            assert columns is not None and columns[1] == values[4:104]
            assert calls == [300, 100]
            assert _integrity.read_values(db, queue_id, 3, 3 + COLUMN_CHECKS - 2)
            assert calls == [300, 100]  # (a short run: the loop)
        finally:
            store.close()
