"""``decode_client_request`` against the general decoder and against itself before the string
value's shortcut (docs/performance-history.md, "The leader's request path (seventh round)"): a frame
of exactly ``48 + len(queue) + len(value)`` bytes is taken as the compact one without orjson
writing it back. Seeded APPEND frames, compact and not (escapes, surrogate pairs, non-ASCII,
spaces, key orders, duplicate and extra keys, values of every JSON type, queues about
``MAX_ID_LENGTH``, invalid UTF-8, and compact frames changed in place so that their length
still matches a different content) decode the same three ways, and the bytes stored for a
value are exactly what every other path stores (``dumps_value``), JSON that loads back to it.
"""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from trio_broker._errors import ProtocolError
from trio_broker._protocol import _codec
from trio_broker._protocol._codec import (
    _APPEND_QUEUE_START,
    _DATA_KEY,
    MAX_ID_LENGTH,
    _append_object,
    as_request,
    decode_client_request,
    decode_request,
    dumps_value,
)


def _before(payload: bytes) -> Any:
    """``decode_client_request`` as it was before the shortcut (7e2755c): every frame's
    compactness checked by orjson writing it back."""
    if type(payload) is bytes and payload.startswith(_APPEND_QUEUE_START):
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"payload is not valid UTF-8 JSON: {exc}") from None
        compact = None
        if len(obj) == 3:
            try:
                compact = orjson.dumps(obj) == payload
            except orjson.JSONEncodeError:
                compact = False
            if compact:
                queue = obj["queue_name"]
                if type(queue) is str and len(queue) <= MAX_ID_LENGTH:
                    end = 37 + len(queue)
                    if payload.startswith(_DATA_KEY, end):
                        return (queue, payload[end + 8 : -1], obj["data"])
        return _append_object(obj, payload, compact)
    return decode_request(payload)


_CHARS = [
    *"abcXYZ019-_. ",
    *'"\\/\x7f\x00\n\x1f\t',
    *"\u00e9\u20ac\u2028\U0001f600\U00010000\ud800",
]
_SHORT = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\n": "\\n", "\t": "\\t", "\x08": "\\b"}


def _string(rng: random.Random, text: str, plain: bool) -> str:
    """``text`` as a JSON string; ``plain``: as orjson writes it, else each character in any
    way JSON allows (and now and then one it does not: a raw control character)."""
    if plain:
        try:
            return orjson.dumps(text).decode()
        except orjson.JSONEncodeError:  # (a lone surrogate: written raw, not UTF-8 then)
            return json.dumps(text, ensure_ascii=False)
    out = ['"']
    for char in text:
        code = ord(char)
        way = rng.random()
        if code > 0xFFFF and way < 0.4:
            high, low = divmod(code - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04X}")
        elif way < 0.25:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else char)
        elif way < 0.4 and char in _SHORT:
            out.append(_SHORT[char])
        elif char in '"\\' or (code < 0x20 and way < 0.9):
            out.append(orjson.dumps(char).decode()[1:-1])
        else:
            out.append(char)  # (a raw control character now and then: invalid)
    out.append('"')
    return "".join(out)


def _text(rng: random.Random, short: bool) -> str:
    length = rng.choice([0, 1, 2, 5, 20, 150] if not short else [0, 1, 5, 10])
    if rng.random() < 0.5:  # (mostly ASCII letters: the compact frames the shortcut takes)
        return "".join(rng.choice("abcXYZ019-_. ") for _ in range(length))
    return "".join(rng.choice(_CHARS) for _ in range(length))


def _queue(rng: random.Random) -> Any:
    way = rng.random()
    if way < 0.2:
        length = rng.choice([MAX_ID_LENGTH - 1, MAX_ID_LENGTH, MAX_ID_LENGTH + 1, 200])
        return "".join(rng.choice("QAZ09-") for _ in range(length))
    if way < 0.25:
        return rng.choice([None, 5, ["Q"], {"q": 1}, True])
    if way < 0.6:
        return "Q-" + "".join(rng.choice("ABC0123") for _ in range(10))
    return _text(rng, short=True)


def _value(rng: random.Random, depth: int = 0) -> Any:
    way = rng.random()
    if way < 0.6 or depth > 2:
        return _text(rng, short=False)
    kinds = [
        0,
        -7,
        2**63 - 1,
        2**64,  # (read as a float by orjson: refused, not changed)
        1.5,
        -0.0,
        1e300,
        None,
        True,
        False,
    ]
    if way < 0.8:
        return rng.choice(kinds)
    if way < 0.9:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {_text(rng, short=True): _value(rng, depth + 1) for _ in range(rng.randrange(3))}


def _json(rng: random.Random, value: Any, plain: bool) -> str:
    if type(value) is str:
        return _string(rng, value, plain)
    if type(value) is list:
        return "[" + ",".join(_json(rng, item, plain) for item in value) + "]"
    if type(value) is dict:
        items = (f"{_string(rng, k, plain)}:{_json(rng, v, plain)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if type(value) is int and value >= 2**64:
        return str(value)
    return orjson.dumps(value).decode()


def _frame(rng: random.Random) -> bytes:
    queue, value = _queue(rng), _value(rng)
    plain = rng.random() < 0.5
    pairs = [
        ("operation", '"APPEND"'),
        ("queue_name", _json(rng, queue, plain)),
        ("data", _json(rng, value, plain)),
    ]
    if not plain:
        if rng.random() < 0.2:  # (a key twice: orjson keeps the last)
            key = rng.choice(["operation", "queue_name", "data"])
            other = '"READ"' if key == "operation" else _json(rng, _value(rng), plain)
            pairs.insert(rng.randrange(2, len(pairs) + 1), (key, other))
        if rng.random() < 0.15:
            pairs.insert(rng.randrange(2, len(pairs) + 1), ("client_id", '"C-AAAAA"'))
        if rng.random() < 0.1:
            pairs[2:] = reversed(pairs[2:])
        if rng.random() < 0.1:
            pairs = [
                (rng.choice(["d\\u0061ta", "data", "dat"]), v) if k == "data" else (k, v)
                for k, v in pairs
            ]
    colon, comma = (":", ",") if plain or rng.random() < 0.6 else (rng.choice([":", " : "]), ", ")
    text = "{" + comma.join(f'"{key}"{colon}{json}' for key, json in pairs) + "}"
    if not plain and rng.random() < 0.1:
        text += rng.choice([" ", "\n", "x"])
    frame = text.encode("utf-8", "surrogatepass")
    way = rng.random()
    if way < 0.25 and len(frame) > len(_APPEND_QUEUE_START) + 2:
        # The same length, another content: bytes changed in place after the common start.
        changed = bytearray(frame)
        for _ in range(rng.choice([1, 1, 2])):
            at = rng.randrange(len(_APPEND_QUEUE_START), len(changed))
            changed[at] = rng.choice(b'\\" ,:}{/\x80\xc3\xff\x00\x7fa')
        frame = bytes(changed)
    elif way < 0.3:
        frame = frame[: rng.randrange(len(frame))]  # (cut short: not JSON)
    return frame


def _outcome(decode: Any, frame: bytes) -> tuple[Any, ...]:
    try:
        result = decode(frame)
    except ProtocolError as exc:
        return ("refused", str(exc), exc.code)
    except Exception as exc:  # (anything else the decoder lets out: compared as well)
        return ("raised", type(exc).__name__, str(exc))
    if type(result) is tuple:
        queue, data, value = result
        return ("plain", queue, type(data), data, repr(value))
    return ("request", repr(result))


def test_append_frames_decode_as_before_and_as_the_general_decoder():
    rng = random.Random(20261207)
    shortcut = plain = refused = 0
    for _ in range(5000):
        frame = _frame(rng)
        now = _outcome(decode_client_request, frame)
        assert now == _outcome(_before, frame), frame
        general = _outcome(decode_request, frame)
        if now[0] == "plain":
            plain += 1
            queue, data, value = decode_client_request(frame)  # type: ignore[misc]
            assert type(data) is bytes and data == dumps_value(value), frame
            assert repr(orjson.loads(data)) == repr(value), frame
            assert general == ("request", repr(as_request((queue, data, value)))), frame
            if type(value) is str and len(frame) == 48 + len(queue) + len(value):
                shortcut += 1
        else:
            refused += now[0] == "refused"
            assert now == general, frame
    # (each kind of frame was met often: the test of the shortcut is not empty)
    assert shortcut > 400 and plain > shortcut + 100 and refused > 400


def test_a_frame_of_the_shortest_length_with_another_content_is_not_the_shortcut():
    """Each change that keeps a compact frame's length makes it another text: not JSON, or an
    object the shortcut must not take as it is (decoded as before, never sliced)."""
    queue, value = "Q-ABC0123456", "hello world"
    frame = orjson.dumps({"operation": "APPEND", "queue_name": queue, "data": value})
    assert len(frame) == 48 + len(queue) + len(value)
    assert decode_client_request(frame) == (queue, b'"hello world"', value)
    changed = 0
    for at in range(len(_APPEND_QUEUE_START), len(frame)):
        for byte in b'\\" ,:}{/\x80\xc3\xff\x00\x7fa':
            other = frame[:at] + bytes([byte]) + frame[at + 1 :]
            if other == frame:
                continue
            changed += 1
            now = _outcome(decode_client_request, other)
            assert now == _outcome(_before, other), other
            if now[0] == "plain":  # (another queue or value, sliced where it is)
                _queue_now, data, value_now = decode_client_request(other)  # type: ignore[misc]
                assert data == dumps_value(value_now)
    assert changed > 400


def test_the_shortcut_is_what_the_compact_frames_take(monkeypatch: pytest.MonkeyPatch):
    """The shortcut (no orjson write-back) is taken by a compact string APPEND, and only
    then: the frames compared above do reach it."""
    written: list[Any] = []

    class _Counting:
        loads = staticmethod(orjson.loads)
        JSONDecodeError = orjson.JSONDecodeError
        JSONEncodeError = orjson.JSONEncodeError

        @staticmethod
        def dumps(value: Any) -> bytes:
            written.append(value)
            return orjson.dumps(value)

    frame = orjson.dumps({"operation": "APPEND", "queue_name": "Q-ABC0123456", "data": "x" * 40})
    monkeypatch.setattr(_codec, "orjson", _Counting)
    assert decode_client_request(frame)[1] == b'"' + b"x" * 40 + b'"'  # type: ignore[index]
    assert written == []
    decode_client_request(frame.replace(b'"x', b'"\\u0078', 1))  # (one escape: written back)
    assert len(written) == 1
