"""The checksums of many stored values without headers at once: what
``_integrity.value_checksum(queue_id, seq, value, None)`` gives for each value of a run numbered
from ``first``, which every broker computes for every value it applies (``insert_plain``,
``insert_stamped``).

Each checksum covers the queue's place (its id and a NUL), the sequence number's decimal
digits and a NUL, then the value's bytes (the stored definition: never change it). The
bytes were made by ``b"%b%d\\0%b" % (place, seq, value)``, about 125 ns a value of 100 bytes,
more than the CRC32C call itself (about 75 ns, of which 60 its fixed cost): bytes ``%``
formatting parses its format each time and writes ``%d`` through a ``str``. Here they are
joined from three pieces in one ``b"".join`` call (about 50 ns): the digits above the last three
(one ``bytes`` for up to a thousand consecutive numbers), then the last three digits and the
NUL from a table made once, then the value; passes of ``map`` in C over the run, no Python
call per value (docs/performance-history.md, "Batch appends per message (eighth round)").
``tests/test_row_sums.py`` holds it to the definition, across every boundary of the digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import google_crc32c

_crc32c = google_crc32c.value
_join = b"".join
_PLAIN = b"%b%d\0%b"

_BELOW = tuple(b"%d\0" % n for n in range(1000))
"""A sequence number below 1,000 (no leading zero) and the NUL after it."""
_LAST_THREE = tuple(b"%03d\0" % n for n in range(1000))
"""The last three digits of a sequence number of 1,000 or more, and the NUL after them."""


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
