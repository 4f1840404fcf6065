"""The codec's hot path: the hand-written forms against the converter's, on one core.

    python -m benchmarks.codec

Measures encoding and decoding of a REPLICATE carrying one COMMAND_GROUP entry of 64 appends,
of a REPLICATE carrying one single-append entry, and of one APPEND_MESSAGE log payload: by
the hand-written functions the broker uses (``_entries._append_to_obj``,
``_consensus._replicate_to_obj`` and their reverses), and by the functions the converter
generates for the same classes, each REPLICATE encoded as its entry's first send (no cached
bytes); then one entry's whole codec work over three brokers (the leader's log bytes, a
REPLICATE to each of two replicas, their decoding and log bytes), the figure that encoding
each entry once changes. The docstrings of the hand-written functions quote its figures;
rerun it before replacing them by the converter's.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any

import orjson

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol import _consensus, _entries


def _best_us(f: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(f, number=number, repeat=7)) / number * 1e6


def _converter_payload_to_obj(payload: Any) -> dict[str, Any]:
    if isinstance(payload, cmd.CommandGroup):
        return {
            "type": "COMMAND_GROUP",
            "commands": [_converter_payload_to_obj(c) for c in payload.commands],
        }
    return {"type": "APPEND_MESSAGE", **_entries._unstructure[cmd.AppendMessage](payload)}


def _converter_payload_from_obj(obj: dict[str, Any]) -> Any:
    if obj["type"] == "COMMAND_GROUP":
        return cmd.CommandGroup(tuple(_converter_payload_from_obj(c) for c in obj["commands"]))
    return _entries._structure[cmd.AppendMessage](obj, cmd.AppendMessage)


def _converter_message_to_obj(m: rm.Replicate) -> dict[str, Any]:
    body = {"operation": "REPLICATE", **_consensus._unstructure[rm.Replicate](m)}
    body["entries"] = []
    for e in m.entries:
        payload = orjson.dumps(_converter_payload_to_obj(e.payload))
        body["entries"].append(
            {
                "index": e.index,
                "term": e.term,
                "checksum": _entries.entry_checksum(e.term, e.index, payload),
                "payload": orjson.Fragment(payload),
            }
        )
    return body


def _converter_message_from_obj(obj: dict[str, Any]) -> rm.Replicate:
    entries = tuple(
        rm.Entry(e["term"], e["index"], _converter_payload_from_obj(e["payload"]))
        for e in obj["entries"]
    )
    fields = {k: v for k, v in obj.items() if k != "entries"}
    fields["entries"] = []
    message = _consensus._structure[rm.Replicate](fields, rm.Replicate)
    return rm.Replicate(
        src=message.src,
        dst=message.dst,
        term=message.term,
        cluster_version=message.cluster_version,
        prev_log_index=message.prev_log_index,
        prev_log_term=message.prev_log_term,
        leader_commit=message.leader_commit,
        entries=entries,
    )


def _log_bytes(entry: rm.Entry) -> bytes:
    """What the log write stores for an entry (the cached bytes where the codec has them)."""
    cached = getattr(_entries, "payload_bytes", None)
    return _entries.encode_payload(entry.payload) if cached is None else cached(entry)


def _forget(entry: rm.Entry) -> rm.Entry:
    """The entry as first encoded: no cached bytes (a fresh entry, for the first send)."""
    if getattr(entry, "encoded", None) is not None:
        entry.remember_encoded(None)
    return entry


def _life(payload: Any, common: dict[str, Any]) -> None:
    """One appended entry's codec work on three brokers, as the runtime does it."""
    entry = rm.Entry(3, 101, payload)
    _log_bytes(entry)
    for peer in ("B-BBBBB", "B-CCCCC"):
        message = rm.Replicate(
            **{**common, "dst": peer},
            prev_log_index=100,
            prev_log_term=3,
            entries=(entry,),
            leader_commit=100,
        )
        frame = _consensus.encode_message(message)
        received = _consensus.message_from_obj(orjson.loads(frame))
        _log_bytes(received.entries[0])


def _row(label: str, hand: float, generated: float) -> None:
    change = generated / hand - 1
    print(f"{label:<52} by hand {hand:7.2f} us   converter {generated:7.2f} us   ({change:+.0%})")


def main() -> None:
    common: dict[str, Any] = {"src": "B-AAAAA", "dst": "B-BBBBB", "term": 3, "cluster_version": 2}
    group = cmd.CommandGroup(
        tuple(
            cmd.AppendMessage(
                "Q-AAAAABBBBB", b'{"n":%d,"pad":"xxxxxxxxxxxxxxxx"}' % i, appended_ms=i
            )
            for i in range(64)
        )
    )
    single = cmd.AppendMessage("Q-AAAAABBBBB", b'{"n":1}', appended_ms=1_700_000_000_000)
    for label, payload, number in (
        ("REPLICATE of a COMMAND_GROUP of 64 appends", group, 300),
        ("REPLICATE of one single-append entry", single, 5000),
    ):
        message = rm.Replicate(
            **common,
            prev_log_index=100,
            prev_log_term=3,
            entries=(rm.Entry(3, 101, payload),),
            leader_commit=100,
        )
        obj = orjson.loads(_consensus.encode_message(message))
        assert _converter_message_from_obj(obj) == message == _consensus.message_from_obj(obj)
        assert orjson.loads(orjson.dumps(_converter_message_to_obj(message))) == obj
        _row(
            f"{label}: encode",
            _best_us(
                lambda m=message: (
                    orjson.dumps(_consensus.message_to_obj(m)),
                    _forget(m.entries[0]),
                ),
                number,
            ),
            _best_us(lambda m=message: orjson.dumps(_converter_message_to_obj(m)), number),
        )
        _row(
            f"{label}: decode",
            _best_us(lambda o=obj: _consensus.message_from_obj(o), number),
            _best_us(lambda o=obj: _converter_message_from_obj(o), number),
        )
    print()
    print("One entry's codec work over three brokers (leader: log bytes, a REPLICATE to each of")
    print("two replicas; each replica: decode it, log bytes), a new entry each time:")
    for label, payload, number in (
        ("a COMMAND_GROUP of 64 appends", group, 300),
        ("one single-append entry", single, 5000),
    ):
        print(f"  {label:<50} {_best_us(lambda p=payload: _life(p, common), number):7.2f} us")
    print()
    obj = orjson.loads(_entries.encode_payload(single))
    _row(
        "APPEND_MESSAGE log payload: encode",
        _best_us(lambda: _entries.payload_to_obj(single), 20000),
        _best_us(lambda: _converter_payload_to_obj(single), 20000),
    )
    _row(
        "APPEND_MESSAGE log payload: decode",
        _best_us(lambda: _entries.payload_from_obj(obj), 20000),
        _best_us(lambda: _converter_payload_from_obj(obj), 20000),
    )


if __name__ == "__main__":
    main()
