"""REPLICATE_RESPONSE written and read by hand (``_consensus._replicate_response_to_obj`` and
``_replicate_response_from_obj``) against the converter's generated functions they stand in
for (docs/performance-history.md, "Pipelined appends and 100 connections (eighth round)"): the same
frame's bytes for every response, and for every object the same message or the same error,
the objects seeded with bad inputs (booleans, floats, strings and None for numbers, numbers
and None for strings, keys missing, extra keys, 64-bit ends and beyond)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from trio_broker._core import _raft_messages as rm
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol import _consensus
from trio_broker._protocol._codec import describe_error
from trio_broker._protocol._consensus import (
    _EXTRA,
    _structure,
    _unstructure,
    encode_message,
    message_from_obj,
    message_from_payload,
)

_CLS = rm.ReplicateResponse
_NUMBERS = ("term", "cluster_version", "match_index", "rejected_index", "hint_index", "hint_term")


def _converter_frame(message: rm.ReplicateResponse, group_id: str | None) -> bytes:
    """The frame as the converter wrote it before the hand-written form."""
    body = {"operation": "REPLICATE_RESPONSE", **_unstructure[_CLS](message)}
    body.update(_EXTRA.get(_CLS, {}))
    if group_id is not None:
        body["group_id"] = group_id
    return orjson.dumps(body)


def _converter_read(obj: dict[str, Any]) -> Any:
    """What ``message_from_obj`` gave for a REPLICATE_RESPONSE before: the converter's
    message, or its error's text."""
    try:
        return _structure[_CLS](dict(obj), _CLS)
    except Exception as exc:  # (message_from_obj's wrapping, as it wraps the converter's)
        return ("error", f"malformed REPLICATE_RESPONSE message: {describe_error(exc)}")


def _read(obj: dict[str, Any]) -> Any:
    try:
        return message_from_obj(dict(obj))
    except RemoteProtocolError as exc:
        return ("error", exc.message)


_INTS = [0, 1, 7, 2**31, 2**63 - 1, -1, -(2**63)]


def _response(rng: random.Random) -> rm.ReplicateResponse:
    numbers = {name: rng.choice(_INTS) for name in _NUMBERS}
    return _CLS(
        src=rng.choice(["B-AAAAA", "B-BBBBB", "", 'B-"\\é']),
        dst=rng.choice(["B-CCCCC", "x"]),
        success=rng.random() < 0.5,
        probe=rng.choice([0, 0, 1, 12345]),
        **numbers,
    )


@pytest.mark.parametrize("seed", range(4))
def test_frames_are_the_converters(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(250):
        message = _response(rng)
        group_id = rng.choice([None, "G-AAAAA"])
        assert encode_message(message, group_id) == _converter_frame(message, group_id)


def test_a_response_the_hand_cannot_write_goes_to_the_converter() -> None:
    """Senders that are not ``str`` and a ``success`` that is not a ``bool`` (what the core
    never makes, but the converter writes): the converter's frame, as before."""
    odd: list[Any] = [
        _CLS(src=1, dst="B-B", term=1, cluster_version=1, success=True),
        _CLS(src="B-A", dst=None, term=1, cluster_version=1, success=False),
        _CLS(src="B-A", dst="B-B", term=1, cluster_version=1, success=1),  # type: ignore[arg-type]
        _CLS(src="B-A", dst="B-B", term=1, cluster_version=1, success=0),  # type: ignore[arg-type]
    ]
    for message in odd:
        assert _consensus._replicate_response_to_obj(message) is None
        assert encode_message(message) == _converter_frame(message, None)


def test_what_the_wire_carries_reads_back() -> None:
    rng = random.Random(7)
    for _ in range(200):
        message = _response(rng)
        assert message_from_payload(encode_message(message, "G-AAAAA")) == ("G-AAAAA", message)


_BAD: list[Any] = [True, False, 1.0, 2.5, "1", None, [], {}, 2**64, -(2**64) - 1, 10**30]


def _object(rng: random.Random) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(encode_message(_response(rng)))
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        change = rng.random()
        key = rng.choice(["broker_id", "to", "status", "probe", *_NUMBERS])
        if change < 0.5:
            obj[key] = rng.choice([*_BAD, 7, "B-ZZZZZ", "success", "rejected", "other"])
        elif change < 0.75:
            obj.pop(key, None)
        else:
            obj[rng.choice(["extra", "operation2", "Status"])] = rng.choice(_BAD)
    return obj


@pytest.mark.parametrize("seed", range(4))
def test_objects_read_as_the_converter_reads_them(seed: int) -> None:
    rng = random.Random(1000 + seed)
    hand = 0
    for _ in range(400):
        obj = _object(rng)
        before = _converter_read(obj)
        assert _read(obj) == before, obj
        if _consensus._replicate_response_from_obj(obj) is not None:
            hand += 1
            got = message_from_obj(dict(obj))
            assert type(got) is _CLS
            assert type(got.success) is bool
    assert hand > 100  # (the hand path was taken, not only the converter's)


def test_the_hand_path_reads_plain_objects_only() -> None:
    base = orjson.loads(encode_message(_response(random.Random(3))))
    assert _consensus._replicate_response_from_obj(base) is not None
    for key in ("broker_id", "to", "status", "term", "cluster_version"):
        missing = dict(base)
        del missing[key]
        assert _consensus._replicate_response_from_obj(missing) is None
    for key in ("term", "probe", "match_index", "hint_term"):
        for bad in (True, 1.0, "1", None):
            assert _consensus._replicate_response_from_obj({**base, key: bad}) is None
    for key in ("broker_id", "to", "status"):
        assert _consensus._replicate_response_from_obj({**base, key: 1}) is None
