"""An APPEND_BATCH decoded from a log entry (a replica's REPLICATE, the log read back) keeps
each value as the bytes the leader stored (``dumps_value``'s), written back from the parsed
list in one ``dumps_values`` call instead of one ``orjson.dumps`` per value
(docs/performance.md, "Batch appends: every broker's µs per message")."""

from __future__ import annotations

import orjson
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._protocol import _entries
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import encode_payload, payload_from_obj

VALUES = {
    "plain strings": ["x" * 100] * 100,
    "commas in values": ["a,b", {"k": 1, "l": [1, 2]}, [3, 4], "no comma", 5],
    "any JSON": [None, True, 1.5, -7, 'é\U0001f600\n"', {"nested": {"deep": [[]]}}, []],
    "one value": [{"a": 1, "b": 2}],
}


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize("grouped", [False, True])
def test_a_batch_decoded_keeps_each_value_as_stored(monkeypatch, values, grouped):
    stored = tuple(dumps_value(v) for v in values)
    batch = cmd.AppendBatch("q", stored, None, None, 7)
    payload = cmd.CommandGroup((batch, batch)) if grouped else batch
    calls: list[int] = []
    real = _entries.dumps_values

    def spied(parsed: list) -> tuple[bytes, ...]:
        calls.append(len(parsed))
        return real(parsed)

    monkeypatch.setattr(_entries, "dumps_values", spied)
    decoded = payload_from_obj(orjson.loads(encode_payload(payload)))
    batches = decoded.commands if grouped else (decoded,)
    assert [b.data for b in batches] == [stored] * len(batches)
    assert all(type(d) is bytes for b in batches for d in b.data)
    assert calls == [len(values)] * len(batches)
