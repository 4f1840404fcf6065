"""The checksums of many stored values without headers at once: what
``_integrity.value_checksum(queue_id, seq, value, None)`` gives for each value of a run numbered
from ``first``, which every broker computes for every value it applies (``insert_plain``,
``insert_stamped``).

Each checksum covers the queue's place (its id and a NUL), the sequence number's decimal
digits and a NUL, then the value's bytes (the stored definition: never change it). The
bytes were made by ``b"%b%d\\0%b" % (place, seq, value)``, about 125 ns a value of 100 bytes,
more than the CRC32C call itself (about 75 ns, of which 60 its fixed cost): bytes ``%``
formatting parses its format each time and writes ``%d`` through a ``str``. Then they were
joined from three pieces in one ``b"".join`` call (about 50 ns): the digits above the last
three (one ``bytes`` for up to a thousand consecutive numbers), then the last three digits and
the NUL from a table made once, then the value (docs/performance-history.md, "Batch appends
per message (eighth round)"). Now no bytes are joined for numbers of 1,000 or more: each
value's checksum is its prefix's continued over the value by one ``extend`` call, each
prefix's checksum one XOR from a table made once (:func:`_extended_sums`; 190 -> 172 ns a
value, docs/performance-history.md, "Batch appends per value on every broker (thirteenth round)").
Passes of ``map`` in C over the run either way, no Python call per value.
``tests/test_row_sums.py`` holds it to the definition, across every boundary of the digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import xor

import google_crc32c

_crc32c = google_crc32c.value
_extend = google_crc32c.extend
_join = b"".join
_PLAIN = b"%b%d\0%b"

_BELOW = tuple(b"%d\0" % n for n in range(1000))
"""A sequence number below 1,000 (no leading zero) and the NUL after it."""
_LAST_THREE = tuple(b"%03d\0" % n for n in range(1000))
"""The last three digits of a sequence number of 1,000 or more, and the NUL after them."""
_FOUR_ZEROS = b"\0\0\0\0"
_FOUR_ZEROS_SUM = _extend(0, _FOUR_ZEROS)
_TAIL_SUMS = tuple(_extend(0, tail) for tail in _LAST_THREE)
"""``extend(0, tail)`` of each of :data:`_LAST_THREE`: what each tail adds to a checksum,
whatever came before it (:func:`plain_checksums`)."""


SHORT_RUN = 12
"""Runs shorter than this take one ``%`` per value: the passes' fixed cost (about 1 µs: the
iterators, the slices and the ``zip`` of each thousand) is more than they spare below about
12 values (thread CPU per value, 100-byte values: one value 614 ns by the ``%`` against
1,598 by the passes, 8 values 266 against 303, 16 values 245 against 218, 256 values 222
against 140; docs/performance-history.md, "A replica's CPU per append (ninth round)"). A one-append
save (sequential appends, a lone APPEND) is one value on every broker."""


def plain_checksums(place: bytes, first: int, data: Sequence[bytes]) -> list[int]:
    """``[crc32c(b"%b%d\\0%b" % (place, seq, value)) for seq, value in enumerate(data,
    first)]``: the checksums of ``data`` numbered from ``first`` in the queue whose place
    (its id's UTF-8 and a NUL) is ``place``. A value that is not a bytes-like object raises
    ``TypeError``, as the ``%`` did."""
    if type(first) is not int or first < 0 or len(data) < SHORT_RUN:
        # (A number never stored, or a short run: the definition's own way, one ``%`` each.)
        return [_crc32c(_PLAIN % (place, seq, value)) for seq, value in enumerate(data, first)]
    try:
        return _extended_sums(place, first, data)
    except TypeError:
        # (A value ``extend`` refuses: any buffer but ``bytes``, a bytearray or a
        # memoryview, which the joins take, or a value that is no buffer, which they refuse
        # with the ``TypeError`` the ``%`` raised.)
        return _joined_sums(place, first, data)


def _extended_sums(place: bytes, first: int, data: Sequence[bytes]) -> list[int]:
    """:func:`plain_checksums` of a run of ``bytes``, each value's checksum continued by one
    ``extend`` call from its prefix's (the queue's place, the number's digits and the NUL),
    with no bytes joined. A CRC's continuation is affine in the CRC it continues:
    ``extend(c, t) == A(c) ^ extend(0, t)``, ``A`` linear and fixed by ``len(t)``. So within a
    thousand, whose numbers share their digits above the last three (their checksum ``c``),
    each prefix's checksum is ``A(c) ^ extend(0, tail)``: one XOR with :data:`_TAIL_SUMS`,
    ``A(c)`` made once per thousand as ``extend(c, z) ^ extend(0, z)`` for four zero bytes
    ``z``. Numbers below 1,000 (the digits' length changes there, and the place alone comes
    before them) take the joins. ``extend`` takes only ``bytes``: ``TypeError`` otherwise, and
    then the caller takes the joins."""
    seq, end = first, first + len(data)
    sums: list[int] = []
    if seq < 1000:
        below = min(1000, end) - seq
        sums = _joined_sums(place, seq, data[:below])
        data, seq = data[below:], seq + below
    values = iter(data)
    while seq < end:
        high, low = divmod(seq, 1000)
        take = min(1000 - low, end - seq)
        head = _crc32c(b"%b%d" % (place, high))
        shifted = _extend(head, _FOUR_ZEROS) ^ _FOUR_ZEROS_SUM
        prefixes = map(xor, repeat(shifted, take), _TAIL_SUMS[low : low + take])
        # (map stops on the prefixes' end before taking a value: the next thousand's pass
        # starts at the next value)
        sums += map(_extend, prefixes, values)
        seq += take
    return sums


def _joined_sums(place: bytes, first: int, data: Sequence[bytes]) -> list[int]:
    """:func:`plain_checksums` by joins: each value's checksummed bytes joined from three
    pieces in one ``b"".join`` (any buffer is taken) and checksummed."""
    sums: list[int] = []
    values = iter(data)
    seq, end = first, first + len(data)
    while seq < end:
        high, low = divmod(seq, 1000)
        take = min(1000 - low, end - seq)
        if high:
            heads = repeat(b"%b%d" % (place, high), take)
            tails = _LAST_THREE[low : low + take]
        else:
            heads = repeat(place, take)
            tails = _BELOW[low : low + take]
        # (zip takes a head, then a tail, then a value: it stops on the heads' end before
        # taking a value, so the next thousand's pass starts at the next value)
        sums += map(_crc32c, map(_join, zip(heads, tails, values, strict=False)))
        seq += take
    return sums
