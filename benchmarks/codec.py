"""The codec's hot path: the hand-written forms against the converter's, on one core.

    python -m benchmarks.codec

Measures encoding and decoding of a REPLICATE carrying one COMMAND_GROUP entry of 64 appends,
of a REPLICATE carrying one single-append entry, and of one APPEND_MESSAGE log payload: by
the hand-written functions the broker uses (``_entries._append_to_obj``,
``_consensus._replicate_to_obj`` and their reverses), and by the functions the converter
generates for the same classes. The docstrings of the hand-written functions quote its
figures; rerun it before replacing them by the converter's.
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
    body["entries"] = [
        {"index": e.index, "term": e.term, "payload": _converter_payload_to_obj(e.payload)}
        for e in m.entries
    ]
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
            _best_us(lambda m=message: orjson.dumps(_consensus.message_to_obj(m)), number),
            _best_us(lambda m=message: orjson.dumps(_converter_message_to_obj(m)), number),
        )
        _row(
            f"{label}: decode",
            _best_us(lambda o=obj: _consensus.message_from_obj(o), number),
            _best_us(lambda o=obj: _converter_message_from_obj(o), number),
        )
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
