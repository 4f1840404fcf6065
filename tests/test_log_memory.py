"""Compaction counts what the in-memory log holds (``_runtime/_snapshots.py``, ``held_size``):
a decoded entry's commands hold two to three times what ``data_size`` counts for them, so a log
of small commands held about three times ``compact_bytes`` before compaction counted them
(docs/performance-history.md, "Peak broker RSS: what holds it, and its bound")."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from trio_broker._core import _commands as cmd
from trio_broker._protocol._entries import decode_payload, encode_payload
from trio_broker._runtime._snapshots import held_size


def _group(kind: str, count: int) -> cmd.CommandGroup:
    if kind == "appends":
        commands = [cmd.AppendMessage("Q-1", b'"' + b"x" * 98 + b'"', None, None, 5)] * count
    else:
        commands = [cmd.ReadNext(f"C-{i % 7}", "Q-1") for i in range(count)]
    return cmd.CommandGroup(tuple(commands))


def _held_by_decoding(raw: bytes) -> tuple[object, int]:
    """The payload decoded from its stored bytes, and the bytes it holds (``tracemalloc``)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        payload = decode_payload(raw)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return payload, held


@pytest.mark.parametrize("kind", ["appends", "reads"])
def test_compaction_counts_at_least_what_a_decoded_entry_holds(kind):
    payload, held = _held_by_decoding(encode_payload(_group(kind, 512)))
    assert isinstance(payload, cmd.CommandGroup) and len(payload.commands) == 512
    assert held_size(payload) >= held, (held_size(payload), held)
    # ... and not wildly more (compaction would then run far more often than it must).
    assert held_size(payload) <= 3 * held, (held_size(payload), held)
    # What message data alone counts falls short of it: the log held more than the setting.
    assert cmd.data_size(payload) < held
